//! Vets a unified diff read from stdin and prints the findings as JSON lines, then the verdict.
//! `git diff | cargo run -p agentstudio-vetting --example vet`

use std::io::Read;

fn main() -> std::io::Result<()> {
    let mut diff = String::new();
    std::io::stdin().read_to_string(&mut diff)?;
    let findings = vetting::vet_diff(&diff, &vetting::VetOptions::default());
    for finding in &findings {
        println!("{}", serde_json::to_string(finding).expect("findings serialize"));
    }
    println!("verdict: {:?}", vetting::verdict(&findings));
    Ok(())
}
