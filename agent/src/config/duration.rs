//! Durations as people write them in a config file: `500us`, `1ms`, `2s`, `1.5s`, `1m`, `1h`.
use std::time::Duration;

/// What the errors list: every unit accepted, smallest first.
const UNITS: &str = "us, ms, s, m or h";

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let bad = || {
        format!("{s:?} is not a duration: write a number and a unit ({UNITS}), such as 500us, 1ms, 2s or 1m")
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("{s:?} has no unit: write {s}s, {s}ms, ... (units: {UNITS})")),
        "ns" => {
            return Err(format!(
                "{s:?}: nanoseconds are finer than the agent's timers; the smallest unit is us (units: {UNITS})"
            ))
        }
        _ => return Err(format!("{s:?}: unit {unit:?} is not one of {UNITS}")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0.5h"), Ok(Duration::from_secs(1800)));
        for bad in ["", "ms", "1", "1d", "-1s", "1.2.3s", "1e9999s", "1ns", "1S"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn errors_say_which_units_work() {
        for bad in ["1ns", "5", "1d", "x", "-1s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("us, ms, s, m or h"), "{bad}: {e}");
        }
        assert!(parse_duration("1ns").unwrap_err().contains("nanoseconds"));
        assert!(parse_duration("5")
            .unwrap_err()
            .contains("has no unit: write 5s"));
        assert!(parse_duration("1d")
            .unwrap_err()
            .contains("unit \"d\" is not one of"));
    }
}
