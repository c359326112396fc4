//! The fault catalogue: every way the hub can misbehave on purpose, and which devices it hits.
//!
//! A fault is a [`FaultKind`] (its parameters, the YAML/JSON schema), a [`Selector`] (which
//! devices) and an optional duration. [`crate::HubHandle::inject`] starts it and returns a
//! [`FaultHandle`] that ends it. A fault is in effect when `inject` returns — connections consult
//! the active set synchronously before every packet — and gone when `end` returns; each fault
//! undoes only what it did. Fault start and end are events.
//!
//! Each fault family is one file: a parameter type that builds a `FaultUnit`, the single
//! interface with hooks at the points where a fault can act (see `unit`). Adding a fault is one
//! file and one line in the `catalogue!` below.

mod active;
mod blackhole;
mod connack;
mod dps;
mod half_open;
mod hub_down;
mod identity;
pub(crate) mod inband;
mod latency;
mod outage;
mod packets;
mod selector;
mod session_loss;
mod throttle;
pub(crate) mod unit;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::VirtualClock;
use crate::dps::Dps;
use crate::events::{EventKind, EventLog, FaultAction, Stamp, Subject};
use crate::registry::Registry;
use crate::services::Services;
use crate::sessions::Sessions;

pub(crate) use active::{ActiveFaults, FaultHooks};
pub use blackhole::Blackhole;
pub use connack::Connack;
pub use dps::{DpsAssigning, DpsDisabled, DpsDrop, DpsError, DpsThrottle};
pub use half_open::HalfOpen;
pub use hub_down::HubDown;
pub use identity::{ClockSkew, Disable, RotateKey};
pub use latency::Latency;
pub use outage::{Outage, OutageMode};
pub use packets::{DelaySuback, DropPingresp, DropPuback};
pub(crate) use selector::Matcher;
pub use selector::Selector;
pub use session_loss::SessionLoss;
pub use throttle::Throttle;
pub(crate) use unit::{DpsAttempt, DpsVerdict, FaultUnit, PacketVerdict};
pub use wire::{Close, MassDrop, Reset, Takeover};

/// Old name of the `connack` fault's parameters.
pub type ConnackMode = Connack;

/// A fault's parameters build the unit that acts on the hub.
pub(crate) trait Spec {
    fn build(&self) -> Box<dyn FaultUnit>;
}

/// Declares the catalogue: each line is a variant of [`FaultKind`], its parameter type (the file
/// that implements it) and its name in scenarios and events.
macro_rules! catalogue {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) = $name:literal ),* $(,)?) => {
        /// What a fault does (the `type` of a fault in scenarios and on the control API).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum FaultKind {
            $( $(#[$doc])* $variant($ty), )*
        }

        impl FaultKind {
            /// The catalogue name.
            pub fn name(&self) -> &'static str {
                match self { $( FaultKind::$variant(_) => $name, )* }
            }

            fn build(&self) -> Box<dyn FaultUnit> {
                match self { $( FaultKind::$variant(f) => f.build(), )* }
            }

            /// Every name in the catalogue.
            pub const NAMES: &'static [&'static str] = &[$( $name, )*];
        }

        $(
            impl From<$ty> for FaultKind {
                fn from(f: $ty) -> FaultKind {
                    FaultKind::$variant(f)
                }
            }
        )*
    };
}

catalogue! {
    /// TCP reset: zero linger, no DISCONNECT, no TLS close_notify.
    Reset(Reset) = "reset",
    /// TLS close_notify then FIN.
    Close(Close) = "close",
    /// Stop reading and writing, keep TCP open: the keep-alive timeout ends it.
    Blackhole(Blackhole) = "blackhole",
    /// Stop reading (the kernel still acknowledges TCP until its buffer fills), keep writing.
    HalfOpen(HalfOpen) = "half_open",
    /// The hub loses session state (as in a failover): CONNECTs while it lasts start clean.
    SessionLoss(SessionLoss) = "session_loss",
    /// Withhold PINGRESP.
    DropPingresp(DropPingresp) = "drop_pingresp",
    /// Withhold PUBACKs to the device's publishes.
    DropPuback(DropPuback) = "drop_puback",
    /// Hold SUBACKs back for a while.
    DelaySuback(DelaySuback) = "delay_suback",
    /// Delay each packet in each direction.
    Latency(Latency) = "latency",
    /// Change how new CONNECTs are answered.
    Connack(Connack) = "connack",
    /// Refuse new connections.
    Outage(Outage) = "outage",
    /// Drop the selected live connections at once.
    MassDrop(MassDrop) = "mass_drop",
    /// Admit at most so many new connections per second.
    Throttle(Throttle) = "throttle",
    /// A second connection with the same identity: the live one is closed (400027).
    Takeover(Takeover) = "takeover",
    /// Disable the identity: live connections close, new ones get CONNACK 3.
    Disable(Disable) = "disable",
    /// Replace the identity's keys: tokens signed with the old key are refused from now on.
    RotateKey(RotateKey) = "rotate_key",
    /// The device's clock is behind or ahead of the hub's, for its token checks.
    ClockSkew(ClockSkew) = "clock_skew",
    /// The hub fails after devices were assigned to it: connections dropped, new ones refused, out
    /// of the provisioning service's rotation.
    HubDown(HubDown) = "hub_down",
    /// The provisioning service answers 429 with `retry-after`.
    DpsThrottle(DpsThrottle) = "dps_throttle",
    /// The provisioning service answers with an error status (5xx by default).
    DpsError(DpsError) = "dps_error",
    /// Registrations stay `assigning` for a long time.
    DpsAssigning(DpsAssigning) = "dps_assigning",
    /// Provisioning connections are closed mid-registration, unanswered.
    DpsDrop(DpsDrop) = "dps_drop",
    /// The enrollment is disabled: registrations end `disabled`.
    DpsDisabled(DpsDisabled) = "dps_disabled",
}

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    #[serde(default)]
    pub devices: Selector,
    /// Ends by itself after this long (virtual wall time).
    #[schemars(with = "Option<String>")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<Duration>,
}

impl Fault {
    /// A fault for every device, until ended.
    pub fn new(kind: impl Into<FaultKind>) -> Fault {
        Fault {
            kind: kind.into(),
            devices: Selector::All,
            duration: None,
        }
    }

    pub fn devices(mut self, selector: Selector) -> Fault {
        self.devices = selector;
        self
    }

    pub fn lasting(mut self, d: Duration) -> Fault {
        self.duration = Some(d);
        self
    }
}

/// What faults reach of a running hub.
#[derive(Clone)]
pub(crate) struct Context {
    pub active: Arc<ActiveFaults>,
    pub sessions: Arc<Sessions>,
    pub services: Arc<Services>,
    pub registry: Registry,
    pub events: EventLog,
    pub clock: VirtualClock,
    pub seed: u64,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// The provisioning service this hub serves, if any (its registration ids can be selected).
    pub dps: Option<Dps>,
}

/// A started fault, as its unit sees it in [`FaultUnit::started`].
pub(crate) struct Started<'a> {
    pub id: u64,
    pub name: &'a str,
}

impl Started<'_> {
    /// How a fault names itself in the close details it causes.
    pub fn detail(&self) -> String {
        format!("fault {} ({})", self.id, self.name)
    }
}

/// Start a fault on a running hub: record it, put it in the active set, let it act, and end it
/// after its duration (or at once for a one-shot fault without one).
pub(crate) fn inject(ctx: &Context, fault: Fault) -> FaultHandle {
    let detail = serde_json::to_value(&fault).ok();
    let unit: Arc<dyn FaultUnit> = Arc::from(fault.kind.build());
    start(
        ctx,
        fault.kind.name(),
        unit,
        &fault.devices,
        detail,
        fault.duration,
    )
}

/// Start a fault unit (catalogue or in-band) with its selection.
pub(crate) fn start(
    ctx: &Context,
    name: &str,
    unit: Arc<dyn FaultUnit>,
    devices: &Selector,
    detail: Option<serde_json::Value>,
    duration: Option<Duration>,
) -> FaultHandle {
    let id = ctx.active.next_id();
    // `percent` draws with the run's seed and the fault's id: the same run picks the same devices.
    let mut known = ctx.registry.client_ids();
    if let Some(dps) = &ctx.dps {
        known.extend(dps.known_registration_ids());
        known.sort();
        known.dedup();
    }
    let matcher = Matcher::resolve(devices, &known, ctx.seed ^ id.rotate_left(17));
    ctx.events.emit(
        &Subject::default(),
        EventKind::Fault {
            id,
            action: FaultAction::Started,
            fault: name.to_owned(),
            detail: detail.map(Box::new),
        },
    );
    ctx.active.insert(id, name, unit.clone(), matcher.clone());
    let started = Started { id, name };
    unit.started(ctx, &started, &|c| matcher.matches(c));
    if unit.one_shot() && duration.is_none() {
        end(ctx, id, Stamp::Now);
    }
    if let Some(d) = duration {
        let task_ctx = ctx.clone();
        let deadline = crate::clock::wall_add(ctx.clock.now(), d);
        let mut timer = ctx.clock.timer(deadline);
        ctx.tasks.spawn(async move {
            tokio::select! {
                biased;
                fired = timer.wait() => {
                    end(&task_ctx, id, Stamp::Wall(fired.at));
                    drop(fired);
                }
                _ = task_ctx.shutdown.cancelled() => {}
            }
        });
    }
    FaultHandle {
        id,
        ctx: ctx.clone(),
    }
}

/// End a fault (once): take it out of the active set, let it undo what it did, and record it.
pub(crate) fn end(ctx: &Context, id: u64, at: Stamp) -> bool {
    let Some((name, unit)) = ctx.active.remove(id) else {
        return false;
    };
    unit.ended(ctx);
    ctx.events.emit_stamped(
        &Subject::default(),
        EventKind::Fault {
            id,
            action: FaultAction::Ended,
            fault: name,
            detail: None,
        },
        at,
    );
    true
}

/// End an active fault by its id; false when none is active with that id.
pub(crate) fn end_by_id(ctx: &Context, id: u64) -> bool {
    end(ctx, id, Stamp::Now)
}

/// Ends an injected fault (or does nothing if it already ended). Dropping it leaves the fault on.
#[derive(Clone)]
pub struct FaultHandle {
    id: u64,
    ctx: Context,
}

impl std::fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl FaultHandle {
    /// The fault's id in events.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// End the fault now; false if it had already ended.
    pub fn end(&self) -> bool {
        end(&self.ctx, self.id, Stamp::Now)
    }

    /// Whether the fault is still active.
    pub fn is_active(&self) -> bool {
        self.ctx.active.contains(self.id)
    }
}
