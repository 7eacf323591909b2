//! hardware fingerprints (to be built: see the hardware fingerprint issue).
