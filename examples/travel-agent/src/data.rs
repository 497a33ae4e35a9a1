//! A small built-in dataset, so the example runs without outside services.

use serde_json::{Value, json};

/// Cities with weather data.
pub(crate) const CITIES: &[&str] = &["Lisbon", "Porto", "London", "Paris", "Madrid", "Berlin"];

/// Weather for a known city.
pub(crate) fn weather(city: &str) -> Option<Value> {
    let (sky, high, low) = match city.trim().to_ascii_lowercase().as_str() {
        "lisbon" => ("sunny", 21, 14),
        "porto" => ("cloudy", 17, 11),
        "london" => ("light rain", 11, 6),
        "paris" => ("overcast", 12, 7),
        "madrid" => ("clear", 16, 5),
        "berlin" => ("windy", 8, 2),
        _ => return None,
    };
    Some(json!({"city": city, "conditions": sky, "high_c": high, "low_c": low}))
}

/// Direct flights between two cities on a date (deterministic sample data).
pub(crate) fn flights(origin: &str, destination: &str, date: &str) -> Vec<Value> {
    if origin.eq_ignore_ascii_case(destination) || origin.is_empty() || destination.is_empty() {
        return Vec::new();
    }
    let seed: u32 = origin
        .bytes()
        .chain(destination.bytes())
        .map(u32::from)
        .sum();
    (0..3)
        .map(|i| {
            let hour = 7 + (seed + i * 5) % 13;
            json!({
                "flight": format!("TA{}", 100 + (seed + i * 37) % 900),
                "origin": origin, "destination": destination, "date": date,
                "departs": format!("{hour:02}:{:02}", (seed * (i + 1)) % 60),
                "price_eur": 49 + (seed + i * 23) % 200
            })
        })
        .collect()
}
