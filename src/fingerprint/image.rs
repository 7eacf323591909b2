//! image fingerprints (to be built: see the image fingerprint issue).
