"""Integration tests of slimta.util.proxyproto over loopback sockets."""
