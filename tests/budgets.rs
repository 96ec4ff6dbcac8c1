//! Every structure a client can grow has an account and a row in
//! `docs/limits.md`: a new per-identity budget without its row, a new store
//! tree without its row, or a configuration field missing from
//! `docs/configuration.md` fails here, so a new path cannot arrive
//! without a bound that somebody wrote down.

use std::path::Path;

use roomq::budget::{Held, Rate};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first cells of the table rows of a Markdown text.
fn first_cells(markdown: &str) -> Vec<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with("| "))
        .filter_map(|l| l.split('|').nth(1))
        .map(|cell| cell.trim().to_string())
        .collect()
}

#[test]
fn every_per_identity_budget_has_its_row_in_the_limits_table() {
    let limits = read("docs/limits.md");
    let configuration = read("docs/configuration.md");
    let keys: Vec<&str> = Held::ALL
        .iter()
        .map(|h| h.key())
        .chain(Rate::ALL.iter().map(|r| r.key()))
        .collect();
    for key in keys {
        assert!(
            limits.contains(&format!("`{key}`")),
            "docs/limits.md does not name the per-identity bound `{key}`"
        );
        assert!(
            configuration.contains(&format!("| `{key}` |")),
            "docs/configuration.md has no row for `{key}`"
        );
    }
    let budget_rows = first_cells(&limits);
    for held in Held::ALL {
        let name = format!("`Held::{held:?}`");
        assert!(budget_rows.contains(&name), "docs/limits.md has no row {name}");
    }
    for rate in Rate::ALL {
        let name = format!("`Rate::{rate:?}`");
        assert!(budget_rows.contains(&name), "docs/limits.md has no row {name}");
    }
}

/// The name a tree is opened with: a string literal, or a `const` of
/// the same file.
fn tree_name(code: &str, argument: &str) -> Option<String> {
    if let Some(literal) = argument.strip_prefix('"') {
        return literal.split('"').next().map(str::to_string);
    }
    let declaration = format!("const {argument}: &str = \"");
    let start = code.find(&declaration)? + declaration.len();
    code[start..].split('"').next().map(str::to_string)
}

#[test]
fn every_store_tree_has_its_row_in_the_limits_table() {
    let rows = first_cells(&read("docs/limits.md"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut found = 0;
    for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
        let file = entry.file_name().to_string_lossy().into_owned();
        // The contract tests open trees of their own; the migration names
        // the trees of older formats.
        if file == "contract_tests.rs" || file == "migrate.rs" {
            continue;
        }
        let code = std::fs::read_to_string(entry.path()).unwrap();
        let code = code.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, _) in code.match_indices("tree(") {
            let argument: String = code[i + 5..].chars().take_while(|c| *c != ')').collect();
            let argument = argument.trim();
            // A tree is named by a literal or a constant; anything else is
            // a function of that name (`fn tree(&self)`) or a closure's
            // parameter.
            let constant =
                !argument.is_empty() && argument.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            if !argument.starts_with('"') && !constant {
                continue;
            }
            let name = tree_name(code, argument)
                .unwrap_or_else(|| panic!("src/store/{file}: cannot tell the name of tree({argument})"));
            found += 1;
            assert!(
                rows.contains(&format!("`{name}`")),
                "the store tree `{name}` (src/store/{file}) has no row in docs/limits.md"
            );
        }
    }
    assert!(
        found >= 8,
        "found only {found} store trees: has the way they are opened changed?"
    );
}

#[test]
fn every_configuration_field_is_documented() {
    // The listing of every setting, grouped (`pub struct Limits in limits
    // {`): a field line is `pub name: Type,` whatever its group.
    let code = read("src/config/settings.rs");
    let documented = read("docs/configuration.md");
    let start = code
        .find("grouped_config! {")
        .expect("the listing of the settings in src/config/settings.rs");
    let body = &code[start..];
    let body = &body[..body.find("\n}").expect("the end of the listing")];
    let mut missing = Vec::new();
    let mut checked = 0;
    for line in body.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("pub ") else {
            continue;
        };
        let Some((name, _)) = rest.split_once(':') else {
            continue;
        };
        if name.contains(' ')
            || matches!(
                name,
                "auth" | "acl" | "rooms" | "alerts" | "cluster" | "listeners"
            )
        {
            continue;
        }
        checked += 1;
        if !documented.contains(&format!("| `{name}` |")) {
            missing.push(name.to_string());
        }
    }
    assert!(
        checked >= 90,
        "found only {checked} settings in the listing: has its shape changed?"
    );
    assert!(
        missing.is_empty(),
        "docs/configuration.md has no row for {missing:?}"
    );
}
