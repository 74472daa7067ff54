//! `previous`: builds the previous release of `takeover` (see `takeover_lab::previous`) if it
//! is not built yet, and prints its path. `cargo xtask test` runs it before the tests, so
//! that the build does not load the machine while timing-sensitive tests run.
fn main() -> anyhow::Result<()> {
    println!("{}", takeover_lab::previous::takeover()?.bin.display());
    Ok(())
}
