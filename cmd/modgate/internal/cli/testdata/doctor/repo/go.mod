module example.test/service

go 1.21

require (
	example.test/lib v1.2.0
	example.test/tool v0.3.0
)

replace example.test/lib => /home/dev/src/lib

replace (
	example.test/tool v0.3.0 => https://git.corp.example.test/tools/tool v0.3.1
	example.test/other => ../other
)
