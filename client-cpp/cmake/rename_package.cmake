# Copies inferential.proto with `package inferential;` -> `package inferential.pb;`
# (see CMakeLists.txt for why). Fails loudly if the line is not found.
file(READ "${IN}" text)
string(REPLACE "\npackage inferential;\n" "\npackage inferential.pb;\n" renamed "${text}")
if(renamed STREQUAL text)
  message(FATAL_ERROR "rename_package: no 'package inferential;' line in ${IN}")
endif()
file(WRITE "${OUT}" "${renamed}")
