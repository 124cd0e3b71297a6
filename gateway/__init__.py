"""The long-running edge gateway: MQTT in, model scores, InfluxDB and alerts out."""
