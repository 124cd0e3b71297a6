// Factory sensor node: DHT22 (temperature, humidity) + analog sound-level meter.
// Arduino Uno / Nano or ESP32 (Arduino core 2.x+). Needs the "DHT sensor library"
// by Adafruit (Library Manager; it pulls in "Adafruit Unified Sensor").
//
// Prints one JSON line per sample on the USB serial port, for sensors.serial_bridge:
//   {"temperature_c":21.4,"humidity_pct":40.2,"sound_db":61.5,"seq":17}
// No "ts": the node has no real-time clock, the Pi stamps each line on receipt.
// "seq" counts printed readings, so a gap downstream means a lost line. It restarts
// at 0 when the board resets (an Uno resets whenever the port is opened).
// Lines starting with '#' are messages for the log, not readings.
// Wiring: see sensors/firmware/README.md.

#include <DHT.h>

#if defined(ESP32)
const int DHT_PIN = 4;     // GPIO4
const int SOUND_PIN = 34;  // GPIO34: ADC1, input only (ADC2 is unusable with WiFi on)
#else
const int DHT_PIN = 2;     // D2
const int SOUND_PIN = A0;
#endif

const unsigned long BAUD = 9600;        // the bridge's --baud must match
const unsigned long PERIOD_MS = 2000;   // the DHT22 needs at least 2 s between reads

DHT dht(DHT_PIN, DHT22);
unsigned long seq = 0;
unsigned long nextMs = 0;

// Sound-level meters such as the DFRobot SEN0232 output a voltage linear in dB(A):
// 0.6 V .. 2.6 V = 30 .. 130 dBA, i.e. 50 dB per volt.
float soundDb() {
#if defined(ESP32)
  float volts = analogReadMilliVolts(SOUND_PIN) / 1000.0;  // calibrated by the core
#else
  float volts = analogRead(SOUND_PIN) * (5.0 / 1023.0);    // 10-bit ADC, 5 V reference
#endif
  return volts * 50.0;
}

void setup() {
  Serial.begin(BAUD);
  dht.begin();
  Serial.println(F("# factory node: DHT22 + sound level, JSON lines"));
}

void loop() {
  if ((long)(millis() - nextMs) < 0) {
    return;  // not due yet (this comparison survives the millis() wrap after 49 days)
  }
  nextMs += PERIOD_MS;

  float t = dht.readTemperature();  // °C
  float h = dht.readHumidity();     // %RH
  if (isnan(t) || isnan(h)) {
    Serial.println(F("# DHT22 read failed"));  // counted as a comment by the bridge
    return;
  }

  Serial.print(F("{\"temperature_c\":"));
  Serial.print(t, 1);
  Serial.print(F(",\"humidity_pct\":"));
  Serial.print(h, 1);
  Serial.print(F(",\"sound_db\":"));
  Serial.print(soundDb(), 1);
  Serial.print(F(",\"seq\":"));
  Serial.print(seq++);
  Serial.println('}');  // CR LF line end: the bridge accepts LF, CR LF or CR
}
