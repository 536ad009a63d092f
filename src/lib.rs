//! Unpublished root package: owns the workspace-level examples and tests.
