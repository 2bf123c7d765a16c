fn main() {
    println!("vmdk: work in progress");
}
