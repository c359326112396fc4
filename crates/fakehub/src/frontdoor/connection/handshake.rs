//! Handshaking: TLS (or, for an in-memory connection of a hub that skips it, nothing), bounded in
//! time and by shutdown.

use fakehub_protocol::codec::MqttIo;
use fakehub_protocol::transport::{Secured, Stream};
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::ending::Ending;
use super::{Guard, State};
use crate::events::{CloseCause, CloseHow, EventKind};

pub(super) async fn run(guard: &mut Guard, stream: Stream) -> State {
    let shared = guard.shared.clone();
    let _ = stream.set_nodelay();
    let max = shared.config.max_packet_size;
    if stream.is_memory() {
        // A network round trip to establish it (TCP's handshake), as a real link would take.
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return State::Closing(None, Ending::shutdown(), None),
            _ = shared.clock.sleep(shared.config.memory_rtt) => {}
        }
    }
    if stream.is_memory() && !shared.config.memory_tls {
        return State::AwaitingConnect(MqttIo::new(Secured::Plain(stream), max), Vec::new());
    }
    let limit = shared.config.tls_handshake_timeout;
    let tls = tokio::select! {
        biased;
        _ = shared.shutdown.cancelled() => return State::Closing(None, Ending::shutdown(), None),
        _ = shared.clock.sleep(limit) => {
            let detail = format!("TLS handshake not finished within {limit:?}");
            return State::Closing(None, Ending::hub_timeout(CloseCause::TlsFailed, detail), None);
        }
        r = shared.tls.accept(stream) => r,
    };
    let tls = match tls {
        Ok(s) => s,
        Err(e) => {
            let detail = Some(format!("TLS handshake failed: {e}"));
            let ending = Ending::device(CloseHow::Fin, CloseCause::TlsFailed, detail);
            return State::Closing(None, ending, None);
        }
    };
    let session = tls.get_ref().1;
    let version = session
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
        .to_owned();
    // Client certificates (X.509 devices), as presented; authentication decides what they prove.
    let certs: Vec<CertificateDer<'static>> = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    guard.emit(EventKind::Tls { version });
    State::AwaitingConnect(MqttIo::new(Secured::Tls(Box::new(tls)), max), certs)
}
