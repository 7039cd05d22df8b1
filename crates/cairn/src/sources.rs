//! The sources this build of cairn knows: one line each. Everything else
//! about a source — its `cairn backup <kind>` subcommand and flags, its
//! `cairn restore` flags, its `cairn.yaml` keys, its exit codes — comes from
//! its crate through the contract (`cairn_source::Source`).

use cairn_source::Registry;

pub fn registry() -> Registry {
    Registry::new()
        .with(cairn_volume::VolumeSource)
        .with(cairn_postgres::PostgresSource)
        .with(cairn_redis::RedisSource)
}
