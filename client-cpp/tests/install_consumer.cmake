# ctest step: install the built library to a temporary prefix, then configure, build
# and run tests/consumer (copied outside the source tree) against that prefix alone.
# Outside the repository, so nothing of the source or build tree can leak in.
string(RANDOM LENGTH 8 tag)
set(work "/tmp/inferential-consumer-${tag}")
file(REMOVE_RECURSE "${work}")
file(MAKE_DIRECTORY "${work}")
execute_process(COMMAND ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${work}/prefix"
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(rc)
  message(FATAL_ERROR "install failed: ${rc}")
endif()
file(COPY "${SOURCE_DIR}/" DESTINATION "${work}/src")
execute_process(COMMAND ${CMAKE_COMMAND} -S "${work}/src" -B "${work}/build" -G Ninja
                        "-DCMAKE_PREFIX_PATH=${work}/prefix" RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the consumer failed: ${rc}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build "${work}/build" RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the consumer failed: ${rc}")
endif()
execute_process(COMMAND "${work}/build/consumer" RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "the consumer failed: ${rc}")
endif()
file(REMOVE_RECURSE "${work}")
