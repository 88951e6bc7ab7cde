//! Build (or find) the default image in an mvm home and print its files:
//! `cargo run -p mvm-image --example build-image -- /path/to/mvm-home`.

struct Print;

impl mvm_image::Progress for Print {
    fn step(&self, message: &str) {
        eprintln!("... {message}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args_os()
        .nth(1)
        .ok_or("usage: build-image MVM_HOME")?;
    let home = mvm_core::MvmHome::new(root);
    let t = std::time::Instant::now();
    let img = mvm_image::ensure_default(&home, &Print)?;
    eprintln!("done in {:?}", t.elapsed());
    println!("{img:#?}");
    Ok(())
}
