"""Start real Mosquitto / InfluxDB / VictoriaMetrics processes for tests, demo and benchmarks.

Each service runs in its own directory on ports given by the caller, as the user
running it; nothing here touches system services.
"""
