package policy

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendAuditLine appends e as one JSON line to dst, byte for byte what
// encoding/json's Encoder with SetEscapeHTML(false) writes for it (field
// order, omitempty, string escaping, number and time formats, the
// newline), without reflection or allocation. ok is false for the values
// encoding/json refuses (a duration that is NaN or infinite, a time
// outside the years 0 to 9999) and for a time not in UTC: the caller then
// asks encoding/json. TestAuditLineMatchesEncodingJSON and FuzzAuditLine hold the
// two together.
func appendAuditLine(dst []byte, e *AuditEntry) (_ []byte, ok bool) {
	if y := e.Time.Year(); y < 0 || y > 9999 || math.IsNaN(e.DurationMS) || math.IsInf(e.DurationMS, 0) {
		return dst, false
	}
	if _, off := e.Time.Zone(); off != 0 {
		return dst, false // Log writes UTC; others take encoding/json's path
	}
	dst = append(dst, `{"time":"`...)
	dst = e.Time.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, '"')
	dst = appendOptional(dst, `,"trace_id":`, e.TraceID)
	dst = appendOptional(dst, `,"span_id":`, e.SpanID)
	dst = appendOptional(dst, `,"client":`, e.Client)
	dst = appendOptional(dst, `,"identity":`, e.Identity)
	dst = appendOptional(dst, `,"mode":`, string(e.Mode))
	dst = append(dst, `,"kind":`...)
	dst = appendJSONString(dst, string(e.Kind))
	dst = appendOptional(dst, `,"module":`, e.Module)
	dst = appendOptional(dst, `,"version":`, e.Version)
	dst = appendOptional(dst, `,"host":`, e.Host)
	dst = appendOptional(dst, `,"upstream":`, e.Upstream)
	dst = append(dst, `,"decision":`...)
	dst = appendJSONString(dst, string(e.Decision))
	dst = append(dst, `,"rule":`...)
	dst = strconv.AppendInt(dst, int64(e.Rule), 10)
	dst = appendOptional(dst, `,"reason":`, e.Reason)
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(e.Status), 10)
	dst = append(dst, `,"bytes":`...)
	dst = strconv.AppendInt(dst, e.Bytes, 10)
	dst = append(dst, `,"duration_ms":`...)
	dst = appendJSONFloat(dst, e.DurationMS)
	dst = appendOptional(dst, `,"claimed_identity":`, e.ClaimedIdentity)
	return append(dst, '}', '\n'), true
}

// appendOptional appends key and s unless s is empty (omitempty).
func appendOptional(dst []byte, key, s string) []byte {
	if s == "" {
		return dst
	}
	return appendJSONString(append(dst, key...), s)
}

const hexDigits = "0123456789abcdef"

// jsonSafe marks the ASCII bytes a JSON string holds as they are: all
// but control bytes, '"' and '\\' (HTML characters too: no HTML escaping).
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

// appendJSONString quotes s as encoding/json does without HTML escaping:
// short escapes for \b \f \n \r \t " and \, \u00XX for the other control
// bytes, U+FFFD for each byte of invalid UTF-8, and U+2028 and U+2029
// escaped (encoding/json escapes them unconditionally).
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case c == '\u2028' || c == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendJSONFloat formats f as encoding/json formats a float64: like
// ES6's number to string, 'f' between 1e-6 and 1e21, else 'e' with the
// exponent unpadded.
func appendJSONFloat(dst []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// e-09 becomes e-9
		n := len(dst)
		if n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}
