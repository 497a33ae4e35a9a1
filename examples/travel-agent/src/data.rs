//! A small built-in dataset, so the example runs without outside services.

/// Cities with weather data and flights.
pub(crate) const CITIES: &[&str] = &["Lisbon", "Porto", "London", "Paris", "Madrid", "Berlin"];

/// Other names of the cities (in Portuguese, Spanish, French, German, Italian), so a question in
/// another language finds the same data.
const ALIASES: &[(&str, &str)] = &[
    ("lisboa", "Lisbon"),
    ("lissabon", "Lisbon"),
    ("lisbonne", "Lisbon"),
    ("oporto", "Porto"),
    ("londres", "London"),
    ("londra", "London"),
    ("parís", "Paris"),
    ("parigi", "Paris"),
    ("madri", "Madrid"),
    ("berlim", "Berlin"),
    ("berlín", "Berlin"),
    ("berlino", "Berlin"),
];

/// The dataset's spelling of a city, matched case- and space-insensitively, by its English name
/// or one of its [`ALIASES`].
pub(crate) fn known_city(city: &str) -> Option<&'static str> {
    let city = city.trim().to_lowercase();
    CITIES
        .iter()
        .copied()
        .find(|c| c.eq_ignore_ascii_case(&city))
        .or_else(|| {
            ALIASES
                .iter()
                .find(|(alias, _)| *alias == city)
                .map(|(_, c)| *c)
        })
}

/// Today's weather in a city.
pub(crate) struct Weather {
    pub(crate) city: &'static str,
    pub(crate) conditions: &'static str,
    pub(crate) high_c: i32,
    pub(crate) low_c: i32,
}

/// Weather for a known city.
pub(crate) fn weather(city: &str) -> Option<Weather> {
    let city = known_city(city)?;
    let (conditions, high_c, low_c) = match city {
        "Lisbon" => ("sunny", 21, 14),
        "Porto" => ("cloudy", 17, 11),
        "London" => ("light rain", 11, 6),
        "Paris" => ("overcast", 12, 7),
        "Madrid" => ("clear", 16, 5),
        _ => ("windy", 8, 2),
    };
    Some(Weather {
        city,
        conditions,
        high_c,
        low_c,
    })
}

/// One direct flight.
pub(crate) struct Flight {
    pub(crate) number: String,
    pub(crate) departs: String,
    pub(crate) price_eur: u32,
}

/// Direct flights from one known city to another on a date (deterministic sample data), sorted
/// by price, cheapest first.
pub(crate) fn flights(from: &str, to: &str, date: &str) -> Vec<Flight> {
    if from == to {
        return Vec::new();
    }
    let seed: u32 = from
        .bytes()
        .chain(to.bytes())
        .chain(date.bytes())
        .map(u32::from)
        .sum();
    let mut flights: Vec<Flight> = (0..3)
        .map(|i| {
            let hour = 7 + (seed + i * 5) % 13;
            Flight {
                number: format!("TA{}", 100 + (seed + i * 37) % 900),
                departs: format!("{hour:02}:{:02}", (seed * (i + 1)) % 60),
                price_eur: 49 + (seed + i * 71) % 200,
            }
        })
        .collect();
    flights.sort_by_key(|f| f.price_eur);
    flights
}

/// One hotel.
pub(crate) struct Hotel {
    pub(crate) name: String,
    pub(crate) stars: u32,
    pub(crate) price_eur: u32,
}

/// Hotels in a known city (deterministic sample data), cheapest first.
pub(crate) fn hotels(city: &str) -> Vec<Hotel> {
    let seed: u32 = city.bytes().map(u32::from).sum();
    let names = ["Central", "Riverside", "Old Town", "Station"];
    let mut hotels: Vec<Hotel> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let i = u32::try_from(i).unwrap_or(0);
            Hotel {
                name: format!("Hotel {name} {city}"),
                stars: 2 + (seed + i) % 4,
                price_eur: 60 + (seed * (i + 3)) % 180,
            }
        })
        .collect();
    hotels.sort_by_key(|h| h.price_eur);
    hotels
}
