//! Registers the provider modules: every file in `src/domain/provider/`
//! (but `mod.rs`) is one provider, so adding a provider is adding its file.
//! Writes `$OUT_DIR/providers.rs`: a `mod` line per file and the list of
//! their `PROVIDER` values, in file-name order (`Service::ALL` sorts them).

use std::fmt::Write as _;
use std::path::PathBuf;

type BuildError = Box<dyn std::error::Error>;

fn main() -> Result<(), BuildError> {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let dir = manifest.join("src/domain/provider");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .ok_or_else(|| format!("{}: not a UTF-8 name", path.display()))?;
        if name == "mod" {
            continue;
        }
        let is_module_name = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !is_module_name {
            return Err(format!(
                "provider file {name}.rs: name it in snake_case (it becomes a module)"
            )
            .into());
        }
        names.push(name.to_owned());
    }
    names.sort();
    let mut out = String::new();
    for name in &names {
        let path = dir.join(format!("{name}.rs"));
        let path = path.to_str().ok_or("the source path is not UTF-8")?;
        writeln!(out, "#[path = {path:?}]\npub(crate) mod {name};")?;
    }
    let list: Vec<String> = names.iter().map(|n| format!("&{n}::PROVIDER")).collect();
    writeln!(
        out,
        "/// Every provider module's facts, in file-name order.\nconst MODULES: [&Provider; {}] = [{}];",
        names.len(),
        list.join(", ")
    )?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
    std::fs::write(out_dir.join("providers.rs"), out)?;
    Ok(())
}
