//! The Grafana dashboard (`contrib/grafana/roomq.json`) as the tests read it.

/// Every `expr` of the Grafana dashboard, with its variables filled in.
pub fn dashboard_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/roomq.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("contrib/grafana/roomq.json")).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries.push(expr.replace("$instance", ".*").replace("$__rate_interval", "1m"));
        }
    }
    queries
}
