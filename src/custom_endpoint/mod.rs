//! Custom endpoint awareness (feature `custom-endpoint`): which instances belong to an
//! Aurora custom endpoint (`<name>.cluster-custom-<id>.<region>.rds.amazonaws.com`), read
//! with `DescribeDBClusterEndpoints` like the AWS Advanced JDBC wrapper's custom endpoint
//! plugin does, so that pools route only to those instances.
//!
//! * [`describe::describe`] makes one call and reads the endpoint's type and members.
//! * [`monitor::join`] hands out a [`monitor::CustomEndpointHandle`] on the process-wide
//!   monitor of one custom endpoint, which keeps the members up to date.

pub(crate) mod describe;
pub(crate) mod monitor;
pub(crate) mod settings;
#[cfg(all(test, feature = "testing"))]
mod tests;

pub(crate) use settings::CustomEndpointSettings;
