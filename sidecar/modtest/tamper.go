package modtest

import (
	"archive/zip"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
)

// tamper serves what inner answers, changed so that it no longer matches
// the checksum database (the "tamper" fault), or a .zip that is not a zip
// at all ("notzip"). Each change keeps the answer well-formed, so that only
// a check against the database can catch it:
//
//	.mod          a comment line added
//	.zip          a valid module zip with one more file
//	/lookup/...   the record's first hash changed (its proof fails)
//	/tile/...     the tile's last byte flipped
//	/latest       the tree hash changed (its signature fails)
func tamper(w http.ResponseWriter, r *http.Request, inner http.Handler, fault, path string) {
	rec := httptest.NewRecorder()
	inner.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	if rec.Code == http.StatusOK {
		switch {
		case fault == "notzip" && strings.HasSuffix(path, ".zip"):
			body = []byte("this is not a zip\n")
		case fault == "notzip":
		case strings.HasSuffix(path, ".mod"):
			body = append(bytes.Clone(body), "// tampered by modtest\n"...)
		case strings.HasSuffix(path, ".zip"):
			body = tamperZip(body)
		case strings.Contains(path, "/lookup/"):
			body = flipAfter(body, " h1:")
		case strings.Contains(path, "/tile/"):
			body = bytes.Clone(body)
			if len(body) > 0 {
				body[len(body)-1] ^= 0xff
			}
		case strings.HasSuffix(path, "/latest"):
			// The third line of the note is the tree hash.
			lines := bytes.SplitN(bytes.Clone(body), []byte("\n"), 4)
			if len(lines) == 4 && len(lines[2]) > 0 {
				lines[2][0] ^= 1
				body = bytes.Join(lines, []byte("\n"))
			}
		}
	}
	for k, vs := range rec.Header() {
		w.Header()[k] = vs
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rec.Code)
	w.Write(body)
}

// flipAfter changes the character after the first sep in body.
func flipAfter(body []byte, sep string) []byte {
	body = bytes.Clone(body)
	if i := bytes.Index(body, []byte(sep)); i >= 0 && i+len(sep) < len(body) {
		c := &body[i+len(sep)]
		if *c == 'A' {
			*c = 'B'
		} else {
			*c = 'A'
		}
	}
	return body
}

// tamperZip returns the module zip with one more file, under the same
// module@version/ prefix: still a valid module zip, with another hash.
func tamperZip(data []byte) []byte {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil || len(zr.File) == 0 {
		return append(bytes.Clone(data), 0)
	}
	// Names start with "<module>@<version>/".
	name := zr.File[0].Name
	at := strings.Index(name, "@")
	slash := strings.Index(name[at+1:], "/")
	if at < 0 || slash < 0 {
		return append(bytes.Clone(data), 0)
	}
	prefix := name[:at+1+slash]
	var out bytes.Buffer
	zw := zip.NewWriter(&out)
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			return append(bytes.Clone(data), 0)
		}
		fw, _ := zw.Create(f.Name)
		io.Copy(fw, rc)
		rc.Close()
	}
	fw, _ := zw.Create(prefix + "/tampered.go")
	io.WriteString(fw, "package tampered // added by modtest\n")
	zw.Close()
	return out.Bytes()
}
