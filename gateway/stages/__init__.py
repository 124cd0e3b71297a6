"""The gateway core: a chain of small stages over one micro-batch of MQTT messages.

    decode -> silences -> detect -> drift / shadow -> encode + notify -> outbox

- :mod:`.decode`: messages -> readings (with their messages), silence commands, rejections;
- :meth:`gateway.silence.Silences.take`: applies the silence commands;
- :mod:`.detect`: :class:`gateway.detection.Detection` (inputs, scores, alert lifecycle,
  sensor-fault rules) and its metrics;
- :class:`gateway.drift_watch.DriftWatch` and :mod:`.shadow`: watch the model;
- :mod:`.encode`: the readings' InfluxDB points;
- :class:`gateway.notifier.Notifier`: every alert (process anomaly, sensor fault, model
  drift) with the same rules: silences, counting, retained device state;
- :class:`gateway.outbox.Outbox`: what the batch sends, MQTT first, then one write.

:mod:`.chain` runs them in that order; the :class:`gateway.pipeline.Processor` thread only
collects batches, runs the chain and sends its outbox.
"""
