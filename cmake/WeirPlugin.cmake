# weir_add_plugin(NAME SOURCES... [OUTPUT_DIR dir])
# Builds a weir plugin: a module weir_<NAME>.so with hidden symbols (only the descriptor alias is
# exported), linked against weir::core, placed in OUTPUT_DIR. Inside weir's own build the default
# is the build's plugin folder, and plugins built there are installed with weir. Built against an
# installed SDK (find_package(weir)), the default is ${CMAKE_BINARY_DIR}/plugins, and the
# configure step prints the WEIR_PLUGIN_PATH that makes `weir` find the plugin.
function(weir_add_plugin name)
  cmake_parse_arguments(ARG "" "OUTPUT_DIR" "SOURCES;CUDA_SOURCES" ${ARGN})
  set(target weir_plugin_${name})
  add_library(${target} MODULE ${ARG_SOURCES} ${ARG_UNPARSED_ARGUMENTS})
  # CUDA kernels (.cu, and the .cc that registers them) build only when weir builds with CUDA;
  # the plugin then defines WEIR_HAVE_CUDA (through weir::cuda) and links libweir_cuda.
  if(ARG_CUDA_SOURCES AND TARGET weir::cuda)
    target_sources(${target} PRIVATE ${ARG_CUDA_SOURCES})
    target_link_libraries(${target} PRIVATE weir::cuda)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
  endif()
  set(install_with_weir OFF)
  if(NOT ARG_OUTPUT_DIR)
    if(WEIR_PLUGIN_OUTPUT_DIR)
      set(ARG_OUTPUT_DIR ${WEIR_PLUGIN_OUTPUT_DIR})
      set(install_with_weir ON)
    else()
      set(ARG_OUTPUT_DIR ${CMAKE_BINARY_DIR}/plugins)
      message(STATUS "weir plugin '${name}': run weir with WEIR_PLUGIN_PATH=${ARG_OUTPUT_DIR}")
    endif()
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    OUTPUT_NAME weir_${name}
    LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIR}
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    # Installed beside libweir_core in <libdir>/weir/plugins.
    INSTALL_RPATH "$ORIGIN/../..")
  target_link_libraries(${target} PRIVATE weir::core)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${WEIR_WARNINGS}>)
  if(install_with_weir)
    install(TARGETS ${target} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/weir/plugins)
  endif()
endfunction()
