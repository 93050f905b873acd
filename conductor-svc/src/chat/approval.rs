//! A person approving or rejecting a change in chat ("Approved. Merge and rebuild.", "reject #3
//! not needed"). Recognised here, before and without the brain: the model never decides that a
//! change is approved, and sandbox output or PR text cannot become an approval because only the
//! sender's own message is read. The approval binds to the head and report this conversation
//! was shown; if the pull request moved since, it is refused.

use super::TurnEvent;
use super::turn::Turn;
use crate::changes::{ApproveInput, ChangeState};

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    Approve { pr: Option<u64> },
    Reject { pr: Option<u64>, reason: String },
}

/// The decision a message states, if it is one. It must lead with it ("approved", "approve #2",
/// "lgtm", "reject #2 because …"); anything hedged or negated is not a decision.
pub(super) fn parse(text: &str) -> Option<Decision> {
    let lower = text.trim().to_lowercase();
    if lower.len() > 500 || ["not ", "n't", "don't", "do not", "?"].iter().any(|n| lower.contains(n)) {
        return None;
    }
    let first = lower.split(|c: char| !c.is_alphanumeric()).find(|w| !w.is_empty())?;
    let pr = lower.split('#').nth(1).and_then(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    match first {
        "approved" | "approve" | "lgtm" => Some(Decision::Approve { pr }),
        "reject" | "rejected" => {
            let reason = text
                .trim()
                .split_once(char::is_whitespace)
                .map(|(_, rest)| rest.trim_start_matches(|c: char| c == '#' || c.is_ascii_digit() || c.is_whitespace()))
                .map(|r| r.trim_start_matches([':', '-', ',']).trim().to_owned())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "rejected in chat".to_owned());
            Some(Decision::Reject { pr, reason })
        }
        _ => None,
    }
}

impl Turn {
    /// Acts on a person's decision; returns what Stu says back.
    pub(super) async fn decide_change(&self, decision: Decision) -> String {
        let changes = &self.chat.inner.changes;
        let pr = match &decision {
            Decision::Approve { pr } | Decision::Reject { pr, .. } => *pr,
        };
        let stored = match pr {
            Some(number) => changes.list("").await.map(|all| all.into_iter().find(|c| c.pr.number == number)),
            None => changes.awaiting_in(&self.conversation_id).await,
        };
        let record = match stored {
            Ok(Some(record)) => record,
            Ok(None) => {
                return match pr {
                    Some(number) => format!("I have not shown you pull request #{number}; ask me to show it first."),
                    None => "There is no template change waiting for a decision in this conversation.".to_owned(),
                };
            }
            Err(error) => return format!("I could not look up the change: {error}"),
        };
        let number = record.pr.number;
        match decision {
            Decision::Reject { reason, .. } => match changes.reject(number, &reason, &self.sender).await {
                Ok(_) => format!(
                    "Pull request #{number} is closed: rejected by {} ({reason}). Nothing was merged.",
                    self.sender
                ),
                Err(error) => format!("I could not reject pull request #{number}: {error}"),
            },
            Decision::Approve { .. } => {
                let input = ApproveInput {
                    pr_number: number,
                    head_sha: record.report.head_sha.clone(),
                    approver: self.sender.clone(),
                    report_digest: record.report.digest.clone(),
                    trace_id: self.trace_id.clone(),
                    ..ApproveInput::default()
                };
                let (view, pipeline) = match changes.approve(input).await {
                    Ok(started) => started,
                    Err(error) => return format!("I did not merge pull request #{number}: {error}"),
                };
                self.emit(TurnEvent::Notice(format!(
                    "approval recorded: #{number} at {} by {}; merging, then build, smoke test and promotion",
                    view.record.pr.head_sha, self.sender
                )))
                .await;
                match pipeline.await {
                    Ok(done) if done.state == ChangeState::Promoted => format!(
                        "Done: {}. New workers start from {}.",
                        done.state_detail,
                        if done.version_ids.is_empty() {
                            "the same version".to_owned()
                        } else {
                            done.version_ids.join(", ")
                        }
                    ),
                    Ok(done) => format!(
                        "Pull request #{number} did not complete ({}): {}",
                        done.state.as_str(),
                        done.state_detail
                    ),
                    Err(error) => format!("The merge pipeline for #{number} stopped unexpectedly: {error}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_explicit_and_lead_the_message() {
        assert_eq!(parse("Approved. Merge and rebuild."), Some(Decision::Approve { pr: None }));
        assert_eq!(parse("approve #12"), Some(Decision::Approve { pr: Some(12) }));
        assert_eq!(parse("LGTM"), Some(Decision::Approve { pr: None }));
        assert_eq!(parse("reject #3: not needed"), None, "a negation anywhere makes it ambiguous: nothing happens");
        assert_eq!(parse("Reject #3 - too broad"), Some(Decision::Reject { pr: Some(3), reason: "too broad".into() }));
        for not_a_decision in
            ["Not approved", "I don't approve", "approved?", "should I approve it", "the PR is approved by vetting"]
        {
            assert_eq!(parse(not_a_decision), None, "{not_a_decision}");
        }
    }
}
