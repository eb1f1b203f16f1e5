"""The worker SDK: call a scenario, fall back, report (turnout.gateway.call), and the front door."""
