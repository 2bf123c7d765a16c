//! Drive the library's convert/compare directly (for benchmarks before the CLI has them).
//!
//! ```text
//! convert [-f raw|vmdk] -O raw|vmdk [-o subformat=NAME] [-m THREADS] [-l LEVEL] SRC DST
//! convert compare A B
//! ```

use std::path::Path;

use vmdk::ops::convert::{self, ConvertOptions};
use vmdk::{CreateOptions, OpenOptions, Subformat};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let none = |_: u64, _: u64| {};
    if args.first().map(String::as_str) == Some("compare") {
        let a = vmdk::open_disk(Path::new(&args[1]), None, &OpenOptions::new())?;
        let b = vmdk::open_disk(Path::new(&args[2]), None, &OpenOptions::new())?;
        println!("{:?}", convert::compare(&*a, &*b, &none)?);
        return Ok(());
    }
    let (mut fmt, mut out_fmt, mut sub) = (None, "raw".to_string(), "monolithicSparse".to_string());
    let mut opts = ConvertOptions::default();
    let mut pos = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-f" => fmt = it.next(),
            "-O" => out_fmt = it.next().unwrap(),
            "-o" => {
                sub = it
                    .next()
                    .unwrap()
                    .trim_start_matches("subformat=")
                    .to_string()
            }
            "-m" => opts.threads = it.next().unwrap().parse()?,
            "-l" => opts.compression_level = it.next().unwrap().parse()?,
            _ => pos.push(a),
        }
    }
    let fmt = fmt.map(|f| f.parse::<vmdk::ImageFormat>()).transpose()?;
    let src = vmdk::open_disk(Path::new(&pos[0]), fmt, &OpenOptions::new())?;
    let dst = Path::new(&pos[1]);
    if out_fmt == "raw" {
        convert::convert_to_raw(&*src, dst, &opts, &none)?;
    } else {
        let create = CreateOptions {
            subformat: Subformat::parse(&sub)?,
            ..Default::default()
        };
        convert::convert_to_vmdk(&*src, dst, &create, &opts, &none)?;
    }
    Ok(())
}
