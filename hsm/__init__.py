"""The node's PKCS#11 keystore: key-encryption key and identity key inside the HSM, key
shares sealed by it, and encrypted backups of a share. The engine is its only user.
"""
