"""An operator-like PKI for front-end TLS tests and make bench (stdlib + openssl CLI only).

What an operator would deploy on an HTTPS listener, made at run time, nothing committed:

  root CA (RSA 2048, 1 year; what clients trust: testssl --add-ca, curl --cacert)
    -> issuing CA (RSA 2048, pathlen 0, 1 year; sent by the server after its certificate)
         -> server certificates: RSA 2048 or ECDSA P-256, subjectAltName DNS names,
            serverAuth EKU, 90 days, a 128-bit random serial, CRL distribution point and
            OCSP / caIssuers URIs (nothing answers there: tests do not phone out)
         -> client certificates (clientAuth EKU) for listeners that ask for one

    pki = OperatorPki("/tmp/x/pki")
    srv = pki.server_cert("www", ["www.farmgate.test"], key_type="rsa2048")
    srv.chain   # PEM: server certificate then the issuing CA (certificateFile / ssl_certificate)
    srv.key     # PEM key, mode 0600 (keyFile / ssl_certificate_key)
    srv.cert    # the server certificate alone
    pki.root    # the root CA's certificate (the trust anchor)
    pki.ca_bundle  # issuing CA + root, for clientCaFile

Used by tests/integration/test_testssl.py and tests/bench.py (which imports it from here).
"""

import os
import subprocess

OPENSSL = "/usr/bin/openssl"
PKI_BASE_URL = "http://pki.farmgate.test"
OCSP_URL = "http://ocsp.farmgate.test/"


def _clean_env():
    return {k: v for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
            and not k.startswith(("OPENSSL_", "SOFTHSM2_", "FGSHIM_"))}


def random_serial():
    """A positive 128-bit serial as openssl's -set_serial wants it (CA/B forum: >= 64 bits of
    randomness)."""
    b = bytearray(os.urandom(16))
    b[0] = (b[0] & 0x7F) | 0x10  # positive, 16 significant bytes
    return "0x" + b.hex()


class ServerCert:
    def __init__(self, name, cert, key, chain, key_type, dns_names):
        self.name, self.cert, self.key, self.chain = name, cert, key, chain
        self.key_type, self.dns_names = key_type, list(dns_names)

    def __repr__(self):
        return "ServerCert(%s, %s, %s)" % (self.name, self.key_type, self.dns_names)


class OperatorPki:
    """Root and issuing CA in `directory` (created, mode 0755; keys 0600)."""

    def __init__(self, directory, org="Farmgate tests", days=365):
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.org = org
        self.root, self.root_key = self.path("root-ca.crt"), self.path("root-ca.key")
        self.ca, self.ca_key = self.path("issuing-ca.crt"), self.path("issuing-ca.key")
        self.ca_bundle = self.path("ca-bundle.pem")
        self._newkey("rsa2048", self.root_key)
        self.openssl("req", "-x509", "-new", "-key", self.root_key, "-out", self.root,
                     "-days", str(days), "-sha256", "-set_serial", random_serial(),
                     "-subj", "/O=%s/CN=Farmgate Test Root CA" % org,
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     "-addext", "subjectKeyIdentifier=hash")
        self._newkey("rsa2048", self.ca_key)
        csr = self.path("issuing-ca.csr")
        self.openssl("req", "-new", "-key", self.ca_key, "-out", csr,
                     "-subj", "/O=%s/CN=Farmgate Test Issuing CA" % org)
        self._sign(csr, self.ca, self.root, self.root_key, days, [
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "keyUsage=critical,keyCertSign,cRLSign",
            "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid",
            "crlDistributionPoints=URI:%s/root-ca.crl" % PKI_BASE_URL,
            "authorityInfoAccess=caIssuers;URI:%s/root-ca.crt" % PKI_BASE_URL])
        with open(self.ca_bundle, "w") as out:
            for p in (self.ca, self.root):
                with open(p) as f:
                    out.write(f.read())
        for p in (self.root, self.ca, self.ca_bundle):
            os.chmod(p, 0o644)

    def path(self, name):
        return os.path.join(self.dir, name)

    def openssl(self, *args):
        cmd = [OPENSSL] + [str(a) for a in args]
        p = subprocess.run(cmd, capture_output=True, timeout=120, cwd=self.dir, env=_clean_env())
        if p.returncode != 0:
            raise AssertionError("`%s` failed (exit %d):\n%s%s" % (
                " ".join(cmd), p.returncode, p.stdout.decode("utf-8", "replace"),
                p.stderr.decode("utf-8", "replace")))
        return p.stdout.decode("utf-8", "replace")

    def _newkey(self, key_type, out):
        if key_type == "rsa2048":
            self.openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                         "-out", out)
        elif key_type == "p256":
            self.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                         "-pkeyopt", "ec_param_enc:named_curve", "-out", out)
        else:
            raise ValueError("key type %r (rsa2048 or p256)" % key_type)
        os.chmod(out, 0o600)

    def _sign(self, csr, out, ca, ca_key, days, ext):
        extfile = out + ".ext"
        with open(extfile, "w") as f:
            f.write("\n".join(ext) + "\n")
        self.openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial",
                     random_serial(), "-days", str(days), "-sha256", "-out", out,
                     "-extfile", extfile)
        os.chmod(out, 0o644)
        return out

    def _leaf_ext(self, usage, key_type, san):
        ku = "digitalSignature,keyEncipherment" if key_type == "rsa2048" else "digitalSignature"
        ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical," + ku,
               "extendedKeyUsage=" + usage, "subjectKeyIdentifier=hash",
               "authorityKeyIdentifier=keyid",
               "crlDistributionPoints=URI:%s/issuing-ca.crl" % PKI_BASE_URL,
               "authorityInfoAccess=OCSP;URI:%s,caIssuers;URI:%s/issuing-ca.crt"
               % (OCSP_URL, PKI_BASE_URL)]
        if san:
            ext.append("subjectAltName=" + ",".join(san))
        return ext

    def server_cert(self, name, dns_names, key_type="rsa2048", days=90):
        """A server certificate for dns_names (subjectAltName; CN = the first). Returns a
        ServerCert whose .chain is the PEM to configure (certificate, then the issuing CA)."""
        key, csr = self.path(name + ".key"), self.path(name + ".csr")
        cert, chain = self.path(name + ".crt"), self.path(name + ".chain.pem")
        self._newkey(key_type, key)
        self.openssl("req", "-new", "-key", key, "-out", csr,
                     "-subj", "/O=%s/CN=%s" % (self.org, dns_names[0]))
        self._sign(csr, cert, self.ca, self.ca_key, days,
                   self._leaf_ext("serverAuth", key_type, ["DNS:" + d for d in dns_names]))
        with open(chain, "w") as out:
            for p in (cert, self.ca):
                with open(p) as f:
                    out.write(f.read())
        os.chmod(chain, 0o644)
        return ServerCert(name, cert, key, chain, key_type, dns_names)

    def sign_server_csr(self, csr, out, dns_names, key_type="rsa2048", days=90):
        """Issues a server certificate for a CSR made elsewhere (e.g. for a key on a token)."""
        return self._sign(csr, out, self.ca, self.ca_key, days,
                          self._leaf_ext("serverAuth", key_type, ["DNS:" + d for d in dns_names]))

    def client_cert(self, name, cn, key_type="p256", days=90):
        """A client certificate with a software key. Returns (cert, key)."""
        key, csr, cert = (self.path(name + x) for x in (".key", ".csr", ".crt"))
        self._newkey(key_type, key)
        self.openssl("req", "-new", "-key", key, "-out", csr,
                     "-subj", "/O=%s/CN=%s" % (self.org, cn))
        self._sign(csr, cert, self.ca, self.ca_key, days,
                   self._leaf_ext("clientAuth", key_type, None))
        return cert, key
