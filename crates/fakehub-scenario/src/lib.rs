//! The scenario runner and the `fakehub` command's parts: reading scenario files, running them on a
//! hub with its devices, judging the expectations, and writing JUnit and HTML reports; `serve`; and
//! exploring generated fault schedules.

pub mod explore;
pub mod input;
pub mod junit;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod serve;
