"""The protocols, one module each, named after the protocol; each defines ``PROTOCOL`` (:mod:`protocols.registry`)."""
