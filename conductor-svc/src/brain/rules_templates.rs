//! The `rules` brain's template intents: checking infrastructure, analysing the worker
//! Dockerfile, installing a package through a pull request, showing the PR, template versions.
//! Deterministic, like the rest of `rules`: an install becomes a fixed shell edit of the
//! checkout, and a package name nobody ships is questioned before anything is opened.

use serde_json::{Value, json};
use vetting::Ecosystem;

use super::{ChatMessage, Role, tools};

pub(super) enum Intent {
    Tool { name: &'static str, input: Value, preface: String },
    Say(String),
}

/// What the infrastructure worker runs to report what the worker template installs.
const ANALYZE_TASK: &str = r#"cd worker || exit 1
echo "Base image:"; grep -E '^FROM ' Dockerfile | sed 's/^/  /'
echo "apt packages:"
awk 'function words(s,  n, w, i) { sub(/&&.*/, "", s); n = split(s, w, " "); for (i = 1; i <= n; i++) if (w[i] !~ /^-/ && w[i] != "\\") print "  " w[i] }
     /apt-get install/ { on = 1; s = $0; sub(/.*apt-get install/, "", s); words(s); next }
     on && /^[ \t]*&&/ { on = 0; next }
     on { words($0) }' Dockerfile
echo "npm packages:"; grep -oE 'npm install -g [^&]*' Dockerfile | sed -e 's/npm install -g /  /' -e 's/[\\"]//g'
echo "pip packages:"; { grep -oE 'pip3? install [^&]*' Dockerfile || echo "(none)"; } | sed 's/^/  /'
echo "Pinned versions:"; grep -E '^ARG [A-Z_]+=' Dockerfile | sed 's/^ARG /  /'
echo "Runs as:"; grep -E '^USER ' Dockerfile | tail -1 | sed 's/^/  /'
echo "Declared capabilities:"; grep -E '^capabilities' template.toml | sed -e 's/ *#.*//' -e 's/^/  /'"#;

pub(super) fn intent(said: &str, history: &[ChatMessage]) -> Option<Intent> {
    let lower = said.to_lowercase();
    if lower.contains("infrastructure") && lower.contains("enabled") {
        return tool(tools::INFRASTRUCTURE_STATUS, json!({}), "");
    }
    if lower.contains("infrastructure worker") && (lower.contains("analy") || lower.contains("report")) {
        return tool(
            tools::SPAWN_INFRASTRUCTURE_WORKER,
            json!({ "task": ANALYZE_TASK, "title": "Analyze the worker template" }),
            "Starting an infrastructure worker to read the worker template's Dockerfile.\n",
        );
    }
    if lower.contains("diff") && (lower.contains("show") || lower.contains("pr") || lower.contains("pull request")) {
        return tool(tools::SHOW_CHANGE, json!({}), "");
    }
    if lower.contains("template version") || lower.contains("version of the template") {
        return tool(tools::TEMPLATE_VERSIONS, json!({ "template": "worker" }), "");
    }
    install(&lower, history)
}

fn tool(name: &'static str, input: Value, preface: &str) -> Option<Intent> {
    Some(Intent::Tool { name, input, preface: preface.to_owned() })
}

/// "install <package> [in the worker template]", "install a random npm package called <x>",
/// and "install <x> anyway" after Stu questioned <x>.
fn install(lower: &str, history: &[ChatMessage]) -> Option<Intent> {
    let at = lower.find("install ")?;
    let words: Vec<&str> = lower[at + "install ".len()..].split_whitespace().collect();
    let mut asked_ecosystem = None;
    let mut name = None;
    for word in &words {
        let word = word.trim_matches(|c: char| matches!(c, '.' | ',' | '!' | '?' | '"' | '\'' | '`' | ':' | ';'));
        match word {
            "npm" | "node" => asked_ecosystem = Some(Ecosystem::Npm),
            "pip" | "pypi" | "python" => asked_ecosystem = Some(Ecosystem::Pypi),
            "apt" | "debian" | "ubuntu" => asked_ecosystem = Some(Ecosystem::Debian),
            "a" | "an" | "the" | "random" | "package" | "called" | "named" | "module" | "library" | "tool" => {}
            "" => {}
            other => {
                name = Some(other.to_owned());
                break;
            }
        }
    }
    let name = name?;
    if !valid_name(&name) {
        return Some(Intent::Say(format!("{name:?} does not look like a package name; name the package to install.")));
    }
    let insisted = lower.contains("anyway") && questioned(history, &name);
    let found =
        [Ecosystem::Npm, Ecosystem::Pypi, Ecosystem::Debian].into_iter().find(|e| vetting::is_known_package(*e, &name));
    let ecosystem = match (asked_ecosystem, found) {
        (Some(asked), _) if vetting::is_known_package(asked, &name) || insisted => asked,
        (None, Some(found)) => found,
        (asked, _) if insisted => asked.unwrap_or(Ecosystem::Npm),
        (asked, _) => {
            let lists = match asked {
                Some(Ecosystem::Npm) => "the npm list".to_owned(),
                Some(Ecosystem::Pypi) => "the PyPI list".to_owned(),
                Some(Ecosystem::Debian) => "the Debian list".to_owned(),
                None => "the npm, PyPI and Debian lists".to_owned(),
            };
            return Some(Intent::Say(format!(
                "I don't know a package called {name:?}: it is not in {lists} I check against. Invented and \
                 look-alike package names are a real supply-chain attack, so I won't add it unprompted. If you are \
                 sure, say \"install {name} anyway\": I will open the pull request, and vetting will still check it \
                 (an unknown name is a blocking finding, so it cannot merge without an audited human override)."
            )));
        }
    };
    let (run, manager) = match ecosystem {
        Ecosystem::Npm => (format!("RUN npm install -g {name} \\&\\& npm cache clean --force"), "npm"),
        Ecosystem::Pypi => (format!("RUN pip3 install --no-cache-dir {name}"), "pip"),
        Ecosystem::Debian => (
            format!(
                "RUN apt-get update \\&\\& apt-get install -y --no-install-recommends {name} \\&\\& rm -rf /var/lib/apt/lists/*"
            ),
            "apt",
        ),
    };
    // Before the final USER line: installs need root; the image still ends unprivileged.
    // Before the first USER line: installs need root; the image still ends unprivileged.
    let task = format!(
        "set -e\ncd worker\n\
         sed -i '0,/^USER /s||# {name}: installed with {manager} on request, via Stu\\n{run}\\n\\n&|' Dockerfile\n\
         grep -q '\"{name}\"' template.toml || sed -i 's/^capabilities = \\[\\(.*\\)\\]/capabilities = [\\1, \"{name}\"]/' template.toml\n\
         grep -n '{name}' Dockerfile template.toml"
    );
    tool(
        tools::SPAWN_INFRASTRUCTURE_WORKER,
        json!({ "task": task, "title": format!("Install {name} in the worker template") }),
        &format!(
            "Starting an infrastructure worker to add {name} ({manager}) to the worker template; its change becomes a pull request.\n"
        ),
    )
}

/// Whether Stu's last reply questioned installing `name`.
fn questioned(history: &[ChatMessage], name: &str) -> bool {
    history
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant)
        .is_some_and(|m| m.text().contains(&format!("install {name} anyway")))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 214
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@/".contains(c))
        && !name.starts_with(['-', '.', '/'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool_input(intent: Option<Intent>) -> (&'static str, Value) {
        match intent {
            Some(Intent::Tool { name, input, .. }) => (name, input),
            _ => panic!("expected a tool"),
        }
    }

    #[test]
    fn the_seed_scenario_phrases_map_to_tools() {
        let (name, _) = tool_input(intent("Check if infrastructure workers are enabled", &[]));
        assert_eq!(name, tools::INFRASTRUCTURE_STATUS);
        let (name, input) = tool_input(intent(
            "Spawn an infrastructure worker to analyze the current worker template Dockerfile and report what's installed",
            &[],
        ));
        assert_eq!(name, tools::SPAWN_INFRASTRUCTURE_WORKER);
        assert!(input["task"].as_str().unwrap().contains("Dockerfile"));
        let (name, input) =
            tool_input(intent("Install Playwright in the worker template. Create a PR with the changes.", &[]));
        assert_eq!(name, tools::SPAWN_INFRASTRUCTURE_WORKER);
        assert!(input["task"].as_str().unwrap().contains("npm install -g playwright"), "{input}");
        assert_eq!(tool_input(intent("Show me the PR diff", &[])).0, tools::SHOW_CHANGE);
        assert_eq!(tool_input(intent("What's the new template version?", &[])).0, tools::TEMPLATE_VERSIONS);
    }

    #[test]
    fn unknown_packages_are_questioned_until_the_person_insists() {
        let said = "Install a random npm package called malicious-package";
        let Some(Intent::Say(question)) = intent(said, &[]) else { panic!("expected a question") };
        assert!(question.contains("install malicious-package anyway"), "{question}");
        let history = vec![
            ChatMessage::user_text(said),
            ChatMessage { role: Role::Assistant, content: vec![super::super::Block::text(question)] },
        ];
        let (name, input) = tool_input(intent("Yes, install malicious-package anyway", &history));
        assert_eq!(name, tools::SPAWN_INFRASTRUCTURE_WORKER);
        assert!(input["task"].as_str().unwrap().contains("npm install -g malicious-package"));
        // "anyway" without having been asked is still questioned.
        assert!(matches!(intent("install evil-pkg-xyz anyway", &[]), Some(Intent::Say(_))));
    }
}
