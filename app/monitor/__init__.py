"""The service watching itself: each process's threshold monitor (app.monitor.thresholds)."""
