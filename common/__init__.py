"""Small pieces every process shares: typed config loading, logging, MQTT sessions."""
