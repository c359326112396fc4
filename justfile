# The two commands of the README.

# The main job: the 65-minute token-expiry scenario against the bundled sample device.
run:
    cargo run --release -- run scenarios/token-expiry-65m.yaml

# Run a hub for manual reproduction (Ctrl-C stops it and writes fakehub-out/).
serve:
    cargo run --release -- serve --config examples/hub.yaml

# Run every test.
test:
    cargo test --workspace

# Benchmarks with ratios against a peer measured in the same run.
bench:
    cargo bench -p fakehub --bench hub_start
    cargo bench -p fakehub --bench mass_drop
    cargo bench -p sample-device --bench time_warp
