#!/usr/bin/env python3
"""Renders an HTML report in headless Chromium and fails when the browser does not show it whole.

    report_check.py PAGE.html --out DIR [--kinds k1,k2,...] [--screenshot PNG]
    report_check.py --self-test --out DIR     # the check must fail on broken pages

Checks, all in the browser's own terms:
  - every <figure id=...> of the file is in the DOM Chromium rendered (--dump-dom), with a
    non-empty <svg> or <table>, and every kind given with --kinds has at least one figure;
  - the screenshot (--screenshot, PNG) is not blank: more than a handful of distinct colours and
    no single colour covering almost every pixel (decoded here with zlib, no imaging library);
  - the browser logs no error and makes no network request: Chromium runs with a proxy that is a
    socket of this script, so any http(s) request (an external image, font, script) reaches it and
    is reported; console messages and resource errors are read from --enable-logging=stderr.
Standard library only. Exit status 0 = pass, 1 = a check failed, 2 = the browser could not run.
"""
import argparse, html.parser, os, shutil, socket, struct, subprocess, sys, tempfile, threading, zlib

BENIGN = (  # container noise that says nothing about the page
    "bus.cc", "dbus", "D-Bus", "Failed to connect to the bus", "gpu", "GPU", "viz_main", "angle", "ANGLE", "vaapi", "VA-API",
    "sandbox", "Fontconfig", "fontconfig", "ozone", "inotify", "crashpad", "Crashpad", "command_buffer", "gl_surface", "GL_",
    "Exiting GPU process", "ContextResult", "SharedImageManager", "skia", "policy", "cert_verify_proc", "nss_util", "ssl_client_socket",
    "object_proxy.cc", "xdg", "kwallet", "gnome", "libsecret", "Unsupported", "TensorFlow", "on_device_model", "optimization_guide",
)


# Chromium's own background services (update checks, network time): not the page's requests.
BROWSER_HOSTS = ("update.googleapis.com", "clients2.google.com", "clients1.google.com", "redirector.gvt1.com",
                 "optimizationguide-pa.googleapis.com", "content-autofill.googleapis.com", "accounts.google.com",
                 "www.googleapis.com", "safebrowsingohttpgateway.googleapis.com", "edgedl.me.gvt1.com")


def browser_own(request_line):
    parts = request_line.split()
    target = parts[1] if len(parts) > 1 else ""
    host = target.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return host in BROWSER_HOSTS


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("report-check: no chromium on PATH (make report-check installs Debian's chromium)")


class Proxy:
    """A listening socket posing as the browser's HTTP proxy: every connection is a network request."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                first = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
            except OSError:
                first = "(no request line)"
            self.requests.append(first)
            try:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            conn.close()


def run_browser(page, out, window, screenshot, proxy):
    profile = tempfile.mkdtemp(prefix="report-check-profile-", dir=out)
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
            "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-features=NetworkTimeServiceQuerying,Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
            "--metrics-recording-only", "--no-pings", f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{proxy.port}",
            "--proxy-bypass-list=<-loopback>", "--enable-logging=stderr", "--v=0", "--hide-scrollbars", f"--window-size={window}",
            "--virtual-time-budget=3000"]
    url = "file://" + os.path.abspath(page)
    try:
        dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, timeout=120)
        shot = subprocess.run(base + [f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        print("report-check: chromium did not finish in 120 s", file=sys.stderr)
        sys.exit(2)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if dom.returncode != 0 or shot.returncode != 0 or not os.path.exists(screenshot):
        print("report-check: chromium failed:\n" + (dom.stderr + shot.stderr).decode(errors="replace")[-3000:], file=sys.stderr)
        sys.exit(2)
    log = (dom.stderr + shot.stderr).decode(errors="replace").splitlines()
    return dom.stdout.decode(errors="replace"), log


class Figures(html.parser.HTMLParser):
    """Figure ids and kinds, and whether each holds a non-empty <svg> or <table>."""

    def __init__(self):
        super().__init__()
        self.figures, self.stack, self.content, self.external = {}, [], {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k, v in attrs:
            low = (v or "").strip().lower()
            if k in ("src", "href", "xlink:href", "srcset", "data", "poster", "action") and "://" in low or "url(" in low:
                self.external.append((self.stack[-1] if self.stack else "", f"<{tag} {k}={v}>"))
        if tag == "figure" and "id" in a:
            self.figures[a["id"]] = a.get("data-kind", "")
            self.stack.append(a["id"])
        elif self.stack and tag in ("rect", "polyline", "polygon", "circle", "td"):
            self.content[self.stack[-1]] = self.content.get(self.stack[-1], 0) + 1

    def handle_endtag(self, tag):
        if tag == "figure" and self.stack:
            self.stack.pop()


def figures(text):
    p = Figures()
    p.feed(text)
    return p


def png_pixels(path):
    """(width, height, rows of bytes) of an 8-bit RGB or RGBA PNG, filters undone."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            if depth != 8 or color not in (2, 6):
                raise ValueError(f"unsupported PNG: depth {depth}, colour type {color}")
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def blank_reason(path):
    width, height, bpp, rows = png_pixels(path)
    counts = {}
    for row in rows[::2]:
        for x in range(0, width * bpp, bpp * 2):
            px = row[x:x + 3]
            counts[px] = counts.get(px, 0) + 1
    total = sum(counts.values())
    top = max(counts.values())
    if len(counts) < 8:
        return f"only {len(counts)} distinct colours in {width}x{height}"
    if top / total > 0.995:
        return f"one colour covers {100 * top / total:.2f}% of the pixels"
    return None


def check(page, out, kinds, screenshot, window="1400,2400"):
    """The list of failures (empty: the page passed)."""
    proxy = Proxy()
    dom, log = run_browser(page, out, window, screenshot, proxy)
    problems = []
    source = figures(open(page, encoding="utf-8").read())
    rendered = figures(dom)
    if not source.figures:
        problems.append("the page has no <figure id=...>")
    for fid, kind in source.figures.items():
        if fid not in rendered.figures:
            problems.append(f"figure {fid} ({kind}) is not in the rendered DOM")
        elif rendered.content.get(fid, 0) == 0:
            problems.append(f"figure {fid} ({kind}) is empty in the rendered DOM")
    for k in kinds:
        if k not in rendered.figures.values():
            problems.append(f"no figure of kind {k} in the rendered DOM")
    reason = blank_reason(screenshot)
    if reason:
        problems.append(f"blank screenshot {screenshot}: {reason}")
    for r in proxy.requests:
        if not browser_own(r):
            problems.append(f"network request: {r}")
    for fid, ref in rendered.external:
        problems.append(f"external reference in the rendered DOM ({fid or 'outside figures'}): {ref}")
    for line in log:
        console = "CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line or "net::ERR" in line
        error = ":ERROR:" in line or ":FATAL:" in line
        if console or (error and not any(b in line for b in BENIGN)):
            problems.append("browser log: " + line.strip()[:300])
    return problems, len(rendered.figures)


def self_test(out):
    """The check must pass a good page and fail a page with an external image, a missing figure, or nothing drawn."""
    good = ("<!DOCTYPE html><html><head><meta charset='utf-8'/><title>t</title></head><body>"
            "<figure id='f1' data-kind='k'><svg width='400' height='300'>" +
            "".join(f"<rect x='{10 * i}' y='{i}' width='9' height='{100 + 5 * i}' fill='#{(37 * i) % 256:02x}{(91 * i) % 256:02x}a0'/>" for i in range(30)) +
            "</svg></figure></body></html>")
    cases = {
        "good": (good, [], True),
        "external-image": (good.replace("</body>", "<img src='http://example.invalid/pixel.png'/></body>"), [], False),
        "missing-kind": (good, ["k", "absent-kind"], False),
        "blank": ("<!DOCTYPE html><html><head><title>t</title></head><body><figure id='f1' data-kind='k'><table><tr><td></td></tr></table></figure></body></html>", [], False),
        "script-error": (good.replace("</body>", "<script>undefinedFunction();</script></body>"), [], False),
    }
    failed = []
    for name, (text, kinds, should_pass) in cases.items():
        path = os.path.join(out, f"self-test-{name}.html")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        problems, _ = check(path, out, kinds, os.path.join(out, f"self-test-{name}.png"), window="800,600")
        passed = not problems
        print(f"report-check self-test {name}: {'pass' if passed else 'fail'}" + ("" if passed else f" ({problems[0]})"))
        if passed != should_pass:
            failed.append(name)
    if failed:
        print("report-check: the check itself is wrong on: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", nargs="?")
    ap.add_argument("--out", required=True)
    ap.add_argument("--kinds", default="")
    ap.add_argument("--screenshot")
    ap.add_argument("--window", default="1400,2400")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.self_test:
        return self_test(a.out)
    shot = a.screenshot or os.path.join(a.out, os.path.splitext(os.path.basename(a.page))[0] + ".png")
    problems, n = check(a.page, a.out, [k for k in a.kinds.split(",") if k], shot, a.window)
    for p in problems:
        print("report-check: " + p, file=sys.stderr)
    print(f"report-check {a.page}: {n} figures rendered, screenshot {shot}: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
