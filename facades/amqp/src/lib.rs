//! AMQP 0-9-1 façade over the replicated log. Empty until an AMQP issue is taken.
