"""Serial bridge: one real sensor node on a serial port -> contract readings on MQTT.

python -m sensors.serial_bridge --port /dev/ttyUSB0 --device press-01 --line line1
python -m sensors.serial_bridge --config config/serial_bridge.toml   # SERIAL_* env too
"""
