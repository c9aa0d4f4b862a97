//! `context ls|use|set|rm`: the config file's named gateways.

use std::process::ExitCode;

use super::CliError;
use crate::args::ContextCommand;
use crate::context::{ConfigFile, Context, ContextError, config_path};

pub fn run(cmd: &ContextCommand) -> Result<ExitCode, CliError> {
    let path = config_path();
    let mut file = ConfigFile::load(&path)?;
    match cmd {
        ContextCommand::Ls => {
            for (name, c) in &file.contexts {
                let mark = if file.current_context.as_deref() == Some(name) {
                    "*"
                } else {
                    " "
                };
                println!("{mark} {name}  {}", c.address);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ContextCommand::Use { name } => {
            if !file.contexts.contains_key(name) {
                return Err(ContextError::Unknown(name.clone()).into());
            }
            file.current_context = Some(name.clone());
            println!("current context: {name}");
        }
        ContextCommand::Set {
            name,
            address,
            token_file,
            ca_file,
            ca_hash,
        } => {
            file.contexts.insert(
                name.clone(),
                Context {
                    address: address.clone(),
                    token_file: token_file.clone(),
                    token: None,
                    ca_file: ca_file.clone(),
                    ca_hash: ca_hash.clone(),
                },
            );
            if file.current_context.is_none() {
                file.current_context = Some(name.clone());
            }
            println!("context {name}: {address}");
        }
        ContextCommand::Rm { name } => {
            if file.contexts.remove(name).is_none() {
                return Err(ContextError::Unknown(name.clone()).into());
            }
            if file.current_context.as_deref() == Some(name) {
                file.current_context = None;
            }
            println!("context {name}: removed");
        }
    }
    file.save(&path)?;
    Ok(ExitCode::SUCCESS)
}
