//! tree fingerprints (to be built: see the tree fingerprint issue).
