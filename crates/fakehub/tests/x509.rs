//! X.509 devices: CA-signed certificates with CN = the identity, self-signed ones registered by
//! thumbprint, and the 401003 refusals when they do not match.

use std::time::Duration;

use fakehub::events::AuthKind;
use fakehub::testkit::{device, RawClient};
use fakehub::tls::{DeviceCertificate, HubCertificates};
use fakehub::{EventKind, Hub, HubHandle, IdentityRef, X509Auth};
use rumqttc::mqttbytes::v4 as mq;

const HOST: &str = "myhub.azure-devices.net";

fn refusal(hub: &HubHandle, dev: &str) -> (u8, Option<u32>, String) {
    hub.events()
        .snapshot()
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::Connack {
                code,
                result,
                reason,
                ..
            } if e.device.as_deref() == Some(dev) => Some((
                *code,
                result.map(|r| r.code()),
                reason.clone().unwrap_or_default(),
            )),
            _ => None,
        })
        .expect("a CONNACK event")
}

#[tokio::test]
async fn a_ca_signed_certificate_with_the_device_id_as_cn_connects_without_a_token() {
    let hub = Hub::builder()
        .host_name(HOST)
        .device("cam-1")
        .x509(&device("cam-1"), X509Auth::CertificateAuthority)
        .device("cam-2")
        .x509(&device("cam-2"), X509Auth::CertificateAuthority)
        .module("cam-1", "vision")
        .x509(
            &IdentityRef::module("cam-1", "vision"),
            X509Auth::CertificateAuthority,
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let cert = hub
        .certificates()
        .issue_device_certificate("cam-1")
        .unwrap();
    let (mut c, ack) = RawClient::connect_x509(&hub, &device("cam-1"), &cert, false)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    let auth = hub.events().snapshot().iter().find_map(|e| match &e.kind {
        EventKind::Connect {
            auth, token_expiry, ..
        } => Some((*auth, *token_expiry)),
        _ => None,
    });
    assert_eq!(auth, Some((AuthKind::X509, None)));
    let props = hub.records()[0].properties().unwrap();
    assert!(
        props.auth_type.unwrap().contains("\"type\":\"x509\""),
        "the Connections record says x509"
    );
    // No token, so no expiry: two virtual hours later the connection is still up.
    c.send(&mq::Packet::PingReq).await.unwrap();
    hub.clock().advance(Duration::from_secs(2 * 3600)).await;
    assert_eq!(hub.connected_count(), 1);

    // The same certificate does not make anyone else cam-1's CN.
    let (_, ack) = RawClient::connect_x509(&hub, &device("cam-2"), &cert, false)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::NotAuthorized);
    let (code, result, reason) = refusal(&hub, "cam-2");
    assert_eq!((code, result), (5, Some(401003)));
    assert!(reason.contains("CN 'cam-1' is not 'cam-2'"), "{reason}");

    // A module's CN is device/module.
    let module_cert = hub
        .certificates()
        .issue_device_certificate("cam-1/vision")
        .unwrap();
    let (_, ack) = RawClient::connect_x509(
        &hub,
        &IdentityRef::module("cam-1", "vision"),
        &module_cert,
        false,
    )
    .await
    .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);

    // A certificate from a CA the hub does not trust.
    let stranger = HubCertificates::generate(HOST)
        .unwrap()
        .issue_device_certificate("cam-2")
        .unwrap();
    let (_, ack) = RawClient::connect_x509(&hub, &device("cam-2"), &stranger, false)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::NotAuthorized);
    assert!(refusal(&hub, "cam-2")
        .2
        .contains("not issued by a CA this hub trusts"));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn another_trusted_ca_and_a_disabled_x509_device() {
    let other_ca = HubCertificates::generate(HOST).unwrap();
    let hub = Hub::builder()
        .host_name(HOST)
        .device("d")
        .x509(&device("d"), X509Auth::CertificateAuthority)
        .trust_ca(other_ca.ca_der())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let cert = other_ca.issue_device_certificate("d").unwrap();
    let (_, ack) = RawClient::connect_x509(&hub, &device("d"), &cert, true)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    hub.set_enabled(&device("d"), false);
    let (_, ack) = RawClient::connect_x509(&hub, &device("d"), &cert, true)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::ServiceUnavailable);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn self_signed_certificates_are_known_by_thumbprint() {
    let primary = DeviceCertificate::self_signed("anything").unwrap();
    let secondary = DeviceCertificate::self_signed("rolled-over").unwrap();
    let unknown = DeviceCertificate::self_signed("sensor-9").unwrap();
    let hub = Hub::builder()
        .host_name(HOST)
        .device("sensor-9")
        .x509(
            &device("sensor-9"),
            X509Auth::SelfSigned {
                // As the portal shows them: SHA-1, and SHA-256 in lower case.
                primary: primary.thumbprints.sha1.clone(),
                secondary: Some(secondary.thumbprints.sha256.to_lowercase()),
            },
        )
        .device("sas-only")
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    for cert in [&primary, &secondary] {
        let (_, ack) = RawClient::connect_x509(&hub, &device("sensor-9"), cert, true)
            .await
            .unwrap();
        assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    }
    let (_, ack) = RawClient::connect_x509(&hub, &device("sensor-9"), &unknown, true)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::NotAuthorized);
    let (_, result, reason) = refusal(&hub, "sensor-9");
    assert_eq!(result, Some(401003));
    assert_eq!(
        reason,
        format!(
            "Thumbprint does not match configuration: Thumbprint: SHA1Hash={}, SHA2Hash={}; Configuration: PrimaryThumbprint={}, SecondaryThumbprint={}",
            unknown.thumbprints.sha1,
            unknown.thumbprints.sha256,
            primary.thumbprints.sha1,
            secondary.thumbprints.sha256.to_lowercase()
        )
    );
    let record = hub.records().pop().unwrap();
    assert_eq!(record.code(), Some(401003));
    assert!(record
        .error_message()
        .starts_with("Thumbprint does not match configuration"));

    // A device registered for SAS only is not let in by a certificate, nor is a CONNECT with
    // neither a token nor a certificate.
    let (_, ack) = RawClient::connect_x509(&hub, &device("sas-only"), &primary, true)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::NotAuthorized);
    assert!(refusal(&hub, "sas-only").2.contains("SAS keys"));
    let mut c = RawClient::connect_tls(&hub).await.unwrap();
    let connect = fakehub::testkit::connect_packet(HOST, &device("sas-only"), "", true, 60);
    c.send(&mq::Packet::Connect(connect)).await.unwrap();
    assert!(matches!(
        c.recv(Duration::from_secs(5)).await,
        fakehub::testkit::Received::Packet(mq::Packet::ConnAck(a))
            if a.code == mq::ConnectReturnCode::NotAuthorized
    ));
    assert!(refusal(&hub, "sas-only")
        .2
        .contains("no client certificate"));
    hub.shutdown().await.unwrap();
}
