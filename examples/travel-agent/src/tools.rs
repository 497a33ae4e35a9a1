//! The travel tools. Their parameter names, descriptions and results are written for small
//! models: each result says what it is in words, marks the cheapest flight, and an unknown city
//! or a bad date is an error that names what is known, so the model can correct itself.

use agent_core::prelude::*;

use crate::data;

fn known_cities() -> String {
    data::CITIES.join(", ")
}

/// Today's weather (conditions, high and low in °C) in one city. Call it once per city the user
/// asks about.
#[tool]
pub(crate) fn get_weather(
    /// The city to get the weather for, e.g. "Lisbon".
    city: String,
) -> Result<String, String> {
    let w = data::weather(&city).ok_or_else(|| {
        format!(
            "No weather data for \"{}\". Weather is known only for: {}.",
            city.trim(),
            known_cities()
        )
    })?;
    Ok(format!(
        "Weather in {} today: {}, high {} °C, low {} °C.",
        w.city, w.conditions, w.high_c, w.low_c
    ))
}

/// Direct flights from one city to another on one date, sorted by price with the cheapest
/// first. The direction matters: `from_city` is where the traveller leaves from.
#[tool]
pub(crate) fn search_flights(
    /// The city the flight departs from (where the traveller is now), e.g. "London".
    from_city: String,
    /// The city the flight arrives in (where the traveller wants to go), e.g. "Lisbon".
    to_city: String,
    /// The travel date as YYYY-MM-DD, e.g. "2026-12-05".
    date: String,
) -> Result<String, String> {
    let unknown = |c: &str| {
        format!(
            "No flight data for \"{}\". Flights are known only between: {}.",
            c.trim(),
            known_cities()
        )
    };
    let from = data::known_city(&from_city).ok_or_else(|| unknown(&from_city))?;
    let to = data::known_city(&to_city).ok_or_else(|| unknown(&to_city))?;
    if from == to {
        return Err(format!(
            "from_city and to_city are both {from}: give two different cities."
        ));
    }
    let date = date.trim();
    if !is_date(date) {
        return Err(format!(
            "\"{date}\" is not a date as YYYY-MM-DD (e.g. 2026-12-05)."
        ));
    }
    let flights = data::flights(from, to, date);
    let (Some(cheapest), Some(earliest)) = (
        flights.first(),
        flights.iter().min_by(|a, b| a.departs.cmp(&b.departs)),
    ) else {
        return Ok(format!("No direct flights from {from} to {to} on {date}."));
    };
    let mut out = format!(
        "{} direct flights from {from} to {to} on {date}. Cheapest: {} at {} EUR. Earliest: {} \
         departing at {}. All, sorted by price (cheapest first):",
        flights.len(),
        cheapest.number,
        cheapest.price_eur,
        earliest.number,
        earliest.departs,
    );
    for (i, f) in flights.iter().enumerate() {
        out.push_str(&format!(
            "\n{}. {} departs {from} at {}, {} EUR{}",
            i + 1,
            f.number,
            f.departs,
            f.price_eur,
            if i == 0 { " (cheapest)" } else { "" }
        ));
    }
    Ok(out)
}

/// Hotels in one city with their stars and price per night, cheapest first.
#[tool]
pub(crate) fn search_hotels(
    /// The city to stay in, e.g. "Lisbon".
    city: String,
) -> Result<String, String> {
    let city = data::known_city(&city).ok_or_else(|| {
        format!(
            "No hotel data for \"{}\". Hotels are known only in: {}.",
            city.trim(),
            known_cities()
        )
    })?;
    let hotels = data::hotels(city);
    let mut out = format!("{} hotels in {city}, cheapest first:", hotels.len());
    for (i, h) in hotels.iter().enumerate() {
        out.push_str(&format!(
            "\n{}. {} ({} stars), {} EUR per night",
            i + 1,
            h.name,
            h.stars,
            h.price_eur
        ));
    }
    Ok(out)
}

/// The flight `number` from `from_city` to `to_city` on `date`, if the dataset has it.
pub(crate) fn find_flight(
    from_city: &str,
    to_city: &str,
    date: &str,
    number: &str,
) -> Result<data::Flight, String> {
    let from =
        data::known_city(from_city).ok_or_else(|| format!("unknown city \"{from_city}\""))?;
    let to = data::known_city(to_city).ok_or_else(|| format!("unknown city \"{to_city}\""))?;
    if !is_date(date.trim()) {
        return Err(format!("\"{date}\" is not a date as YYYY-MM-DD"));
    }
    data::flights(from, to, date.trim())
        .into_iter()
        .find(|f| f.number.eq_ignore_ascii_case(number.trim()))
        .ok_or_else(|| {
            format!(
                "there is no flight {number} from {from} to {to} on {date}: search flights first"
            )
        })
}

/// `YYYY-MM-DD` with a plausible month and day.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    let number = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    matches!(
        (number(y, 4), number(m, 2), number(d, 2)),
        (Some(_), Some(1..=12), Some(1..=31))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weather_names_known_cities_when_unknown() {
        let known = get_weather::run("  lisbon ".into()).expect("known");
        assert_eq!(
            known,
            "Weather in Lisbon today: sunny, high 21 °C, low 14 °C."
        );
        // Names in other languages find the same city.
        for alias in ["Lisboa", "LISSABON"] {
            assert_eq!(get_weather::run(alias.into()).expect("alias"), known);
        }
        assert!(
            search_flights::run("Madrid".into(), "París".into(), "2026-12-12".into())
                .expect("alias")
                .contains("from Madrid to Paris")
        );
        let unknown = get_weather::run("Tokyo".into()).expect_err("unknown");
        assert!(unknown.contains("\"Tokyo\"") && unknown.contains("Lisbon, Porto"));
    }

    #[test]
    fn hotels_are_cheapest_first_and_flights_are_found_by_number() {
        let out = search_hotels::run("lisboa".into()).expect("hotels");
        assert!(
            out.starts_with("4 hotels in Lisbon, cheapest first:"),
            "{out}"
        );
        let prices: Vec<u32> = out
            .lines()
            .skip(1)
            .map(|l| {
                let eur = l.split(", ").last().expect("price");
                eur.split(' ').next().expect("n").parse().expect("number")
            })
            .collect();
        assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{out}");
        assert!(search_hotels::run("Tokyo".into()).is_err());
        let f = find_flight("London", "Lisbon", "2026-12-05", "ta999").expect("found");
        assert_eq!((f.number.as_str(), f.price_eur), ("TA999", 116));
        assert!(find_flight("London", "Lisbon", "2026-12-05", "TA1").is_err());
    }

    #[test]
    fn flights_are_sorted_cheapest_first_and_checked() {
        let out = search_flights::run("London".into(), "Lisbon".into(), "2026-12-05".into())
            .expect("flights");
        assert!(
            out.starts_with(
                "3 direct flights from London to Lisbon on 2026-12-05. Cheapest: TA999 at 116 \
                 EUR. Earliest: TA962 departing at 08:30."
            ),
            "{out}"
        );
        let prices: Vec<u32> = out
            .lines()
            .skip(1)
            .map(|l| {
                let eur = l.split(", ").nth(1).expect("price");
                eur.split(' ').next().expect("n").parse().expect("number")
            })
            .collect();
        assert_eq!(prices.len(), 3);
        assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{out}");
        assert!(out.lines().nth(1).expect("first").ends_with("(cheapest)"));
        assert_eq!(out.matches("(cheapest)").count(), 1);
        // The direction is kept: the reverse search is a different result.
        let back = search_flights::run("Lisbon".into(), "London".into(), "2026-12-05".into())
            .expect("flights");
        assert!(back.contains("from Lisbon to London"));

        assert!(
            search_flights::run("London".into(), "Tokyo".into(), "2026-12-05".into())
                .expect_err("unknown")
                .contains("\"Tokyo\"")
        );
        assert!(search_flights::run("Porto".into(), "porto".into(), "2026-12-05".into()).is_err());
        for bad in ["5 December", "2026-13-01", "2026-12-5", ""] {
            assert!(
                search_flights::run("London".into(), "Lisbon".into(), bad.into()).is_err(),
                "{bad}"
            );
        }
    }
}
