//! How qemu's tools write what users type and read: `key=value,...` option lists (`,,` a
//! literal comma), booleans (`on`/`off` and qapi's other words), sizes (`qemu_strtosz`'s
//! suffixes) on input, and sizes on output (`size_to_str` of qemu-img, `cvtstr` of qemu-io).
//!
//! One copy for every front end: the CLI's `-o`, `--object` and size arguments and the
//! Python module's take the same words, as qemu's tools do.

use crate::error::{Error, Result};

/// Parse a size the way `qemu_strtosz` does: a decimal (or `0x` hex) number with an optional
/// binary suffix `B`, `k`, `M`, `G`, `T`, `P` or `E` (either case). A fractional part needs a
/// suffix larger than bytes (`1.5M`); the result is truncated to whole bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let s = text.trim();
    let bad = || {
        Error::invalid(format!(
            "invalid size '{text}' (use a number with an optional k, M, G, T, P or E suffix)"
        ))
    };
    let is_hex = s.starts_with("0x") || s.starts_with("0X");
    let (num, suffix) = match s.chars().last() {
        Some(c) if c.is_ascii_alphabetic() && !(is_hex && c.is_ascii_hexdigit()) => {
            (&s[..s.len() - 1], Some(c))
        }
        _ => (s, None),
    };
    let mul: u64 = match suffix.map(|c| c.to_ascii_uppercase()) {
        None | Some('B') => 1,
        Some('K') => 1 << 10,
        Some('M') => 1 << 20,
        Some('G') => 1 << 30,
        Some('T') => 1 << 40,
        Some('P') => 1 << 50,
        Some('E') => 1 << 60,
        Some(_) => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    if let Some(hex) = num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        let v = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
        return v.checked_mul(mul).ok_or_else(bad);
    }
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u64 = int.parse().map_err(|_| bad())?;
    let mut v = whole.checked_mul(mul).ok_or_else(bad)?;
    if let Some(f) = frac {
        if mul == 1 || f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let fraction: f64 = format!("0.{f}").parse().map_err(|_| bad())?;
        v = v
            .checked_add((fraction * mul as f64) as u64)
            .ok_or_else(bad)?;
    }
    Ok(v)
}

/// C's `printf("%.3g", v)` for the values `size_to_str` produces (non-negative, finite).
fn fmt_g3(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    // The decimal exponent after rounding to 3 significant digits.
    let sci = format!("{v:.2e}");
    let exp: i32 = sci
        .rsplit_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    if !(-4..3).contains(&exp) {
        // %g switches to exponent notation: mantissa without trailing zeros, e+XX.
        let (m, _) = sci.split_once('e').unwrap_or((&sci, ""));
        let m = trim_fraction(m);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", exp.abs());
    }
    let decimals = (2 - exp).max(0) as usize;
    trim_fraction(&format!("{v:.decimals$}")).to_string()
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// qemu's `size_to_str`: "10 MiB", "144 KiB", "512 B", "1.5 GiB".
pub fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // frexp(val / (1000/1024)) exponent, minus one, over ten: switch to the next unit once
    // the number would print as 1000 or more.
    let scaled = val as f64 / (1000.0 / 1024.0);
    let exp = if scaled == 0.0 {
        0
    } else {
        scaled.log2().floor() as i32 + 1
    };
    let i = ((exp - 1) / 10).clamp(0, 6) as usize;
    let div = (1u64 << (i * 10)) as f64;
    format!("{} {}B", fmt_g3(val as f64 / div), SUFFIXES[i])
}

/// qemu-io's `cvtstr`: "%.3f" with a binary unit, ".000" dropped ("64 KiB", "9.875 MiB",
/// "512 bytes").
pub fn cvtstr(value: f64) -> String {
    const UNITS: [(f64, &str); 6] = [
        ((1u64 << 60) as f64, " EiB"),
        ((1u64 << 50) as f64, " PiB"),
        ((1u64 << 40) as f64, " TiB"),
        ((1u64 << 30) as f64, " GiB"),
        ((1u64 << 20) as f64, " MiB"),
        ((1u64 << 10) as f64, " KiB"),
    ];
    let (mut s, suffix) = match UNITS.iter().find(|(u, _)| value >= *u) {
        Some((u, suffix)) => (format!("{:.3}", value / u), *suffix),
        None => (format!("{value:.6}"), " bytes"),
    };
    if let Some(i) = s.find(".000") {
        s.truncate(i);
    }
    s.push_str(suffix);
    s
}

/// Split qemu-style `key=value,key=value` option strings (`,,` is a literal comma); several
/// `-o` flags add up.
pub fn split_options<S: AsRef<str>>(opts: &[S]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for o in opts {
        let mut cur = String::new();
        let mut parts = Vec::new();
        let mut chars = o.as_ref().chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    parts.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        parts.push(cur);
        for p in parts.into_iter().filter(|p| !p.is_empty()) {
            match p.split_once('=') {
                Some((k, v)) => out.push((k.to_string(), v.to_string())),
                None if p == "help" || p == "?" => out.push((p, String::new())),
                None => {
                    return Err(Error::invalid(format!(
                        "Invalid parameter '{p}' (expected key=value)"
                    )))
                }
            }
        }
    }
    Ok(out)
}

/// A boolean option's value as qemu's `qapi_bool_parse` reads it: `on`, `yes`, `true`, `y`
/// or `off`, `no`, `false`, `n`; anything else is refused, naming the option `key`.
pub fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(Error::invalid(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_sizes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("100b").unwrap(), 100);
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert!(parse_size("").is_err());
        assert!(parse_size("12abc").is_err());
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999E").is_err());
    }

    #[test]
    fn formats_like_qemu_img() {
        assert_eq!(size_to_str(10485760), "10 MiB");
        assert_eq!(size_to_str(147456), "144 KiB");
        assert_eq!(size_to_str(12288), "12 KiB");
        assert_eq!(size_to_str(512), "512 B");
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(5368709120), "5 GiB");
        assert_eq!(size_to_str(1536 << 20), "1.5 GiB");
        assert_eq!(size_to_str(196608), "192 KiB");
        assert_eq!(size_to_str(3221225472), "3 GiB");
        assert_eq!(size_to_str(86016), "84 KiB");
        assert_eq!(size_to_str(123456789), "118 MiB");
    }

    #[test]
    fn splits_options() {
        let o = split_options(&["subformat=streamOptimized,compat6=on", "a=b,,c"]).unwrap();
        assert_eq!(
            o,
            vec![
                ("subformat".into(), "streamOptimized".into()),
                ("compat6".into(), "on".into()),
                ("a".into(), "b,c".into())
            ]
        );
        assert!(split_options(&["bogus"]).is_err());
    }

    #[test]
    fn parses_qapi_booleans() {
        for w in ["on", "yes", "true", "y"] {
            assert!(parse_bool("k", w).unwrap());
        }
        for w in ["off", "no", "false", "n"] {
            assert!(!parse_bool("k", w).unwrap());
        }
        assert!(parse_bool("k", "maybe").is_err());
    }

    #[test]
    fn formats_like_qemu_io() {
        assert_eq!(cvtstr(65536.0), "64 KiB");
        assert_eq!(cvtstr(10240.0), "10 KiB");
        assert_eq!(cvtstr(40.0), "40 bytes");
        assert_eq!(cvtstr(0.0), "0 bytes");
        assert_eq!(cvtstr(10354688.0), "9.875 MiB");
        assert_eq!(cvtstr(1114112.0), "1.062 MiB");
        assert_eq!(cvtstr(1000.0), "1000 bytes");
    }
}
