//! Auth, redaction of the broker's secrets, health and reflection.

use agentstudio_proto::sandbox::v1 as pb;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sandbox_svc::secret::SecretString;
use tonic::Code;

use crate::common::*;

const GITHUB_CANARY: &str = "ghp_Zq3xK9mB2vT7nL4pR8wY1cF6hJ0sD5gA2eQx";
/// Special characters so its URL- and JSON-escaped forms differ from the raw one.
const PUNCTUATED_CANARY: &str = "p@ss/w0rd+\"quoted\"\\back&more";

#[tokio::test]
async fn every_rpc_but_health_needs_the_token() {
    let broker = TestBroker::start(|_| {}).await;
    for token in [None, Some("wrong-token-0123456789")] {
        let mut client = broker.client_with_token(token).await;
        let create =
            client.create_sandbox(pb::CreateSandboxRequest { template: "worker".into(), ..Default::default() }).await;
        assert_eq!(create.unwrap_err().code(), Code::Unauthenticated, "{token:?}");
        let list = client.list_sandboxes(pb::ListSandboxesRequest::default()).await;
        assert_eq!(list.unwrap_err().code(), Code::Unauthenticated);
        let attach = client.attach_process(pb::AttachProcessRequest::default()).await;
        assert_eq!(attach.unwrap_err().code(), Code::Unauthenticated);
        let mut reflection =
            tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(broker.channel().await);
        let request = tokio_stream::iter(vec![list_services_v1()]);
        assert_eq!(reflection.server_reflection_info(request).await.unwrap_err().code(), Code::Unauthenticated);
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(broker.channel().await);
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status, 1, "SERVING without a token");
    let named = tonic_health::pb::HealthCheckRequest { service: "agentstudio.sandbox.v1.SandboxService".into() };
    assert_eq!(health.check(named).await.unwrap().into_inner().status, 1);
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_non_loopback_listener_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sandbox_svc::BrokerConfig::for_tests(dir.path().to_owned());
    config.listen_addr = "0.0.0.0:0".parse().unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("SANDBOX_AUTH_TOKEN"), "{error}");
    config.auth_token = Some(SecretString::new("short"));
    assert!(config.validate().unwrap_err().to_string().contains("at least 16"));
}

fn list_services_v1() -> tonic_reflection::pb::v1::ServerReflectionRequest {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
}

#[tokio::test]
async fn reflection_lists_the_service_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let broker = TestBroker::start(|_| {}).await;
    let mut v1_client =
        v1::server_reflection_client::ServerReflectionClient::with_interceptor(broker.channel().await, auth);
    let mut responses =
        v1_client.server_reflection_info(tokio_stream::iter(vec![list_services_v1()])).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list response")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"agentstudio.sandbox.v1.SandboxService".to_owned()), "{names:?}");

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::with_interceptor(broker.channel().await, auth);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "agentstudio.sandbox.v1.SandboxService".into(),
        )),
    };
    let mut responses = alpha.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap().message_response;
    assert!(
        matches!(response, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
    broker.stop().await.unwrap();
}

fn auth(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(request)
}

/// Every form the canary takes in the output below; none may appear.
fn forbidden_forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    for prefix in ["", "a", "ab"] {
        let input = format!("{prefix}{secret}");
        for encoded in [STANDARD.encode(&input), URL_SAFE_NO_PAD.encode(&input)] {
            // The part that depends only on the secret's bytes.
            let skip = [0, 2, 3][prefix.len()];
            forms.push(encoded[skip..skip + 20].to_owned());
        }
    }
    forms
}

#[tokio::test]
async fn the_brokers_secrets_never_leave_it_in_any_form() {
    let broker = TestBroker::start(|c| {
        c.redact_secrets = vec![SecretString::new(GITHUB_CANARY), SecretString::new(PUNCTUATED_CANARY)];
    })
    .await;
    let mut client = broker.client().await;
    let sandbox = create(&mut client, "worker").await;
    let url_escaped: String = PUNCTUATED_CANARY
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let json_escaped = PUNCTUATED_CANARY.replace('\\', "\\\\").replace('"', "\\\"");
    let mut script = String::from("set -e\n");
    script.push_str(&format!("printf '%s\\n' 'raw {GITHUB_CANARY} end'\n"));
    script.push_str(&format!("printf '%s\\n' '{url_escaped}' '{json_escaped}' >&2\n"));
    for prefix in ["", "a", "ab"] {
        let encoded = STANDARD.encode(format!("{prefix}{GITHUB_CANARY}"));
        let url_safe = URL_SAFE_NO_PAD.encode(format!("{prefix}{PUNCTUATED_CANARY}!"));
        script.push_str(&format!("echo 'Authorization: Basic {encoded}'; echo 'u={url_safe}'\n"));
    }
    // Split across separate pipe reads at every byte boundary.
    for k in 1..GITHUB_CANARY.len() {
        let (head, tail) = GITHUB_CANARY.split_at(k);
        script.push_str(&format!("printf '%s' 'split {head}'; sleep 0.005; printf '%s\\n' '{tail} done'\n"));
    }
    let mut request = start_request(&sandbox.sandbox_id, &script);
    request.env = metadata(&[("TOKEN_IN_ENV", GITHUB_CANARY)]);
    let events = collect(client.start_process(request).await.unwrap().into_inner()).await;
    assert_eq!(exit_of(&events).unwrap().exit_code, 0, "{}", stderr_of(&events));
    let all = format!("{}{}", stdout_of(&events), stderr_of(&events));
    for secret in [GITHUB_CANARY, PUNCTUATED_CANARY] {
        for form in forbidden_forms(secret) {
            assert!(!all.contains(&form), "{form:?} leaked in:\n{all}");
        }
    }
    for form in [url_escaped.as_str(), json_escaped.as_str()] {
        assert!(!all.contains(form), "{form:?} leaked");
    }
    assert!(all.contains("raw [redacted] end"), "{all}");
    assert_eq!(all.matches("split [redacted] done\n").count(), GITHUB_CANARY.len() - 1, "{all}");

    // Files read back and error messages are masked too.
    run(&mut client, &sandbox.sandbox_id, &format!("echo '{GITHUB_CANARY}' > leak.txt")).await;
    let read = pb::ReadFileRequest { sandbox_id: sandbox.sandbox_id.clone(), path: "leak.txt".into() };
    assert_eq!(&client.read_file(read).await.unwrap().into_inner().content[..], b"[redacted]\n");
    let probe = pb::GetSandboxRequest { sandbox_id: format!("x{GITHUB_CANARY}") };
    let status = client.get_sandbox(probe).await.unwrap_err();
    assert!(!status.message().contains(GITHUB_CANARY) && status.message().contains("[redacted]"), "{status:?}");
    let probe =
        pb::ReadFileRequest { sandbox_id: sandbox.sandbox_id.clone(), path: format!("{PUNCTUATED_CANARY}.txt") };
    let status = client.read_file(probe).await.unwrap_err();
    assert!(!status.message().contains("w0rd+"), "{status:?}");
    broker.stop().await.unwrap();
}
