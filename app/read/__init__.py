"""Reading the audit log: queries, PHI access reports, exports."""
