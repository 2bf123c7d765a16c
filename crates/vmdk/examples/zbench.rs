//! Compare grain compressors (libdeflate vs flate2/zlib-rs) on the non-zero 64 KiB grains of a
//! raw file: throughput on one core and total output size, per level.
//! `zbench FILE [MAX_MB]`

use std::io::Write;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).unwrap();
    let max: usize = args.get(2).map_or(256, |s| s.parse().unwrap()) << 20;
    let grains: Vec<&[u8]> = data
        .chunks(65536)
        .filter(|g| g.iter().any(|&b| b != 0))
        .scan(0usize, |n, g| {
            *n += g.len();
            (*n <= max).then_some(g)
        })
        .collect();
    let total: usize = grains.iter().map(|g| g.len()).sum();
    println!("{} grains, {} MiB", grains.len(), total >> 20);
    for level in [1, 3, 4, 5, 6, 7, 9] {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
        let mut out = vec![0u8; c.zlib_compress_bound(65536)];
        let t = Instant::now();
        let mut sz = 0usize;
        for g in &grains {
            let n = c.zlib_compress(g, &mut out).unwrap();
            sz += (n + 12).next_multiple_of(512);
        }
        let dt = t.elapsed().as_secs_f64();
        println!(
            "libdeflate L{level}: {:7.1} MB/s  out {:>10}",
            total as f64 / dt / 1e6,
            sz
        );
        let t = Instant::now();
        let mut sz = 0usize;
        for g in &grains {
            let mut e = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(70000),
                flate2::Compression::new(level as u32),
            );
            e.write_all(g).unwrap();
            let v = e.finish().unwrap();
            sz += (v.len() + 12).next_multiple_of(512);
        }
        let dt = t.elapsed().as_secs_f64();
        println!(
            "zlib-rs    L{level}: {:7.1} MB/s  out {:>10}",
            total as f64 / dt / 1e6,
            sz
        );
    }
}
