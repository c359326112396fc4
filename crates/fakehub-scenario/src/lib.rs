//! The scenario runner and the `fakehub` command's parts: reading scenario files, running them on a
//! hub with its devices, judging the expectations, and writing JUnit and HTML reports; `serve`
//! with its control API ([`control`]), which plays the same timeline steps ([`service_steps`]) over
//! HTTP; exploring generated fault schedules ([`explore`]); and the benchmark against mosquitto
//! ([`mod@bench`]).

pub mod bench;
pub mod control;
pub mod explore;
pub mod input;
pub mod junit;
pub mod output;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod serve;
pub mod service_steps;
