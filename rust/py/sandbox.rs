//! Bindings for `sandbox`: starting a container's command inside its overlay.

use std::ffi::OsString;
use std::path::PathBuf;

use pyo3::prelude::*;

use crate::sandbox::{self, OverlayCommand, Step};

/// What the child was doing when it failed, for the message.
fn doing(step: Step) -> &'static str {
    match step {
        Step::Session => "starting a session on the terminal",
        Step::Namespaces => "making a private mount namespace (and user namespace)",
        Step::IdMaps => "writing the user namespace's id maps",
        Step::Private => "making the mounts private",
        Step::Mount => "mounting the overlay",
    }
}

/// Starts `argv` in a new session, in a private mount namespace (with `userns`, a user
/// namespace where this process's ids are root's) where the overlay `options` is mounted on
/// `directory/merged` (paths in `options` relative to `directory`, the working directory);
/// `stdio` are the descriptors for its stdin, stdout and stderr (duplicated), `terminal`
/// takes stdin as its controlling terminal, `env` is its whole environment (None: this
/// process's). Returns its pid; the caller waits for it. A failure in the child is a
/// `ContainerError` that says which step failed and why; a program not found is
/// `FileNotFoundError`.
// A Python signature of keyword options, as the other bindings have.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (argv, directory, options, *, userns, stdio, terminal=false, env=None))]
fn spawn_in_overlay(
    argv: Vec<OsString>,
    directory: PathBuf,
    options: String,
    userns: bool,
    stdio: (i32, i32, i32),
    terminal: bool,
    env: Option<Vec<(OsString, OsString)>>,
) -> PyResult<u32> {
    let command = OverlayCommand {
        argv,
        env,
        dir: directory,
        options,
        userns,
        stdio: [stdio.0, stdio.1, stdio.2],
        terminal,
    };
    sandbox::spawn(&command).map_err(|e| match sandbox::failed_step(&e) {
        Some((step, os)) => Python::attach(|py| {
            let message = format!("the sandbox could not start: {}: {os}", doing(step));
            match py
                .import("layercore.errors")
                .and_then(|m| m.getattr("ContainerError"))
                .and_then(|class| class.call1((message,)))
            {
                Ok(value) => PyErr::from_value(value),
                Err(lookup) => lookup,
            }
        }),
        None => PyErr::from(e),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(spawn_in_overlay, m)?)
}
