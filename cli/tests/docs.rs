//! `docs/cli.md` is generated from the clap definitions: this test fails
//! when the file is out of date. Refresh it with
//! `SKIFF_BLESS=1 cargo test -p skiff --test docs`.

const START: &str = "<!-- generated from cli/src/args.rs: do not edit below -->";
const END: &str = "<!-- end of the generated reference -->";

#[test]
fn the_cli_reference_is_what_the_cli_says() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let (head, rest) = doc
        .split_once(START)
        .expect("docs/cli.md has the start marker");
    let (_, tail) = rest
        .split_once(END)
        .expect("docs/cli.md has the end marker");
    let options = clap_markdown::MarkdownOptions::new()
        .show_footer(false)
        .show_table_of_contents(true)
        .title("`skiff` command reference".to_string());
    let generated = clap_markdown::help_markdown_custom::<skiff::args::Cli>(&options);
    let want = format!("{head}{START}\n\n{}\n{END}{tail}", generated.trim());
    if std::env::var_os("SKIFF_BLESS").is_some() {
        std::fs::write(path, &want).unwrap();
        return;
    }
    assert!(
        doc == want,
        "docs/cli.md is out of date: refresh it with SKIFF_BLESS=1 cargo test -p skiff --test docs"
    );
}
