//! MQTT façade over the replicated log. Empty until an MQTT issue is taken.
