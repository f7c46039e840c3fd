//! The dashboard in a real terminal: raw mode and the alternate screen for as long as it
//! runs, restored however it ends (q, Ctrl-C, a signal, an error, a panic), and the loop
//! that merges poll rounds, keys and the answers to pause and resume.

use std::sync::Arc;

use crossterm::event::{Event, EventStream};
use futures_util::StreamExt;
use ratatui::DefaultTerminal;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::Fleet;
use crate::control::{Control, Controls};
use crate::dashboard::{self, Action, Ui};
use crate::poll::Round;

/// The terminal in dashboard mode. Dropping it puts the terminal back; a panic does the
/// same through the hook `ratatui::try_init` installs.
struct Screen(DefaultTerminal);

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        // If entering fails half way, raw mode may already be on: undo it.
        ratatui::try_init().map(Screen).inspect_err(|_| ratatui::restore())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Draws the fleet until `q`, Ctrl-C or `cancel`. Cancels `cancel` when it ends, so the
/// poller stops with it.
pub async fn run(
    mut fleet: Fleet,
    mut ui: Ui,
    mut rounds: mpsc::Receiver<Round>,
    mut controls: Controls,
    poll_now: Arc<Notify>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut screen = Screen::enter()?;
    let mut events = EventStream::new();
    let (said_tx, mut said) = mpsc::channel::<Result<String, String>>(8);
    let commands = TaskTracker::new();
    let mut dirty = true;
    let result: anyhow::Result<()> = loop {
        if dirty {
            if let Err(e) = screen.0.draw(|f| dashboard::draw(f, &fleet, &ui, shared::storage::now_ms())) {
                break Err(e.into());
            }
            dirty = false;
        }
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            round = rounds.recv() => {
                let Some(round) = round else { break Ok(()) };
                if let Some(run) = round.records.as_ref().and_then(|r| r.new_run.as_ref())
                    && controls.token_from_run
                {
                    controls.token = run.control_token.clone();
                    ui.can_control = controls.token.is_some();
                }
                fleet.apply(round);
                dirty = true;
            }
            Some(answer) = said.recv() => {
                ui.message = Some(match answer {
                    Ok(m) => (m, false),
                    Err(m) => (m, true),
                });
                dirty = true;
            }
            event = events.next() => match event {
                Some(Ok(Event::Key(key))) => match ui.on_key(key, fleet.workers().len()) {
                    Action::Quit => break Ok(()),
                    Action::Redraw => dirty = true,
                    Action::Nothing => {}
                    Action::Send(i, command) => {
                        let Some(target) = fleet.targets().get(i).cloned() else { continue };
                        // A fleet over several hosts has a token per supervisor: the
                        // worker's own run's, unless --control-token names one.
                        let token = match &target.token {
                            Some(t) if controls.token_from_run => Some(t.clone()),
                            _ => controls.token.clone(),
                        };
                        let (Some(token), Some(worker)) = (token, fleet.workers().get(i)) else { continue };
                        let control = Control::new(controls.client.clone(), token);
                        let worker_id = worker.worker_id();
                        let (said_tx, poll_now, cancel) = (said_tx.clone(), poll_now.clone(), cancel.clone());
                        commands.spawn(async move {
                            let answer = tokio::select! {
                                _ = cancel.cancelled() => return,
                                a = control.send(&target, worker_id, command) => a,
                            };
                            if answer.is_ok() {
                                // Show the new state now rather than at the next tick.
                                poll_now.notify_one();
                            }
                            let _ = said_tx.send(answer).await;
                        });
                    }
                },
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("cannot read the terminal")),
                None => break Ok(()),
            },
        }
    };
    cancel.cancel();
    commands.close();
    commands.wait().await;
    drop(screen);
    result
}
