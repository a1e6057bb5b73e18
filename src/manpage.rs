//! The man pages: `resque(1)` from the clap definitions (synopsis with every command and its
//! option arguments, options, commands) plus the sections written in `man/resque.1.in`, one page
//! per subcommand, and `resque.toml(5)` as written in `man/resque.toml.5` (tests/docs_sync.rs
//! keeps it in step with the configuration keys in the code).

use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use std::io::Write;
use std::path::Path;

const RESQUE_1_SECTIONS: &str = include_str!("../man/resque.1.in");
const RESQUE_TOML_5: &str = include_str!("../man/resque.toml.5");

/// The inline synopsis of one argument: `[--count N]`, `QUEUE`, `[ARGS_JSON]`.
fn synopsis_arg(arg: &clap::Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    let mut out = Vec::new();
    let required = arg.is_required_set();
    if !required {
        out.push(roman("["));
    }
    match arg.get_long() {
        Some(long) => {
            out.push(bold(format!("--{long}")));
            if takes_value {
                let optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
                if optional {
                    out.push(roman("[="));
                    out.push(italic(value));
                    out.push(roman("]"));
                } else {
                    out.push(roman(" "));
                    out.push(italic(value));
                }
            }
        }
        None => out.push(italic(value)),
    }
    if !required {
        out.push(roman("]"));
    }
    out
}

/// One synopsis line per runnable command: `resque [options] failed show INDEX`.
fn synopsis(roff: &mut Roff, prefix: &str, cmd: &clap::Command) {
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    let path = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix} ")
    };
    if subs.is_empty() || !cmd.is_subcommand_required_set() && !prefix.is_empty() {
        let mut line = vec![bold("resque"), roman(" ["), italic("options"), roman("] ")];
        line.push(bold(path.trim_end().to_string()));
        for arg in cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        {
            line.push(roman(" "));
            line.extend(synopsis_arg(arg));
        }
        roff.control("br", []);
        roff.text(line);
    }
    for sub in subs {
        synopsis(roff, &format!("{path}{}", sub.get_name()), sub);
    }
}

/// `resque.1`.
pub fn resque_1(mut cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    // Fills in what the derive leaves to the parser (how many values an option takes).
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    let mut global = vec![bold("resque")];
    for arg in cmd.get_arguments().filter(|a| a.is_global_set()) {
        global.push(roman(" "));
        global.extend(synopsis_arg(arg));
    }
    global.push(roman(" "));
    global.push(italic("command"));
    global.push(roman(" ..."));
    roff.text(global);
    roff.control("PP", []);
    roff.text([
        roman("where "),
        italic("options"),
        roman(" are the global options above, and "),
        italic("command"),
        roman(" is one of:"),
    ]);
    roff.control("PP", []);
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        synopsis(&mut roff, sub.get_name(), sub);
    }
    roff.to_writer(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.write_all(RESQUE_1_SECTIONS.as_bytes())?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Writes resque.1, one page per subcommand, and resque.toml.5 into `dir`.
pub fn generate(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // The subcommand pages as clap_mangen writes them; resque.1 is then replaced.
    clap_mangen::generate_to(cmd.clone(), dir)?;
    std::fs::write(dir.join("resque.1"), resque_1(cmd)?)?;
    std::fs::write(dir.join("resque.toml.5"), RESQUE_TOML_5)?;
    Ok(())
}
